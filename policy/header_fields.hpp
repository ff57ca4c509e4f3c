// Header fields of an RFC 5322 message (CRLF line ends): splitting the header section into its
// fields, and removing chosen fields. Used by DKIM/DMARC (From:, DKIM-Signature) and by
// delivery to drop forged Authentication-Results (RFC 8601 §5).
// A field removal names a field by (name, occurrence): the n-th field of that name, counted
// from the top of the message from 0, case-insensitively. That is exactly what a milter's
// smfi_chgheader(name, n + 1, NULL) does, so both front ends can apply the same removals.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace moat::policy {

struct HeaderField {
  std::string_view name;   // as written (no trailing whitespace before the colon)
  std::string_view value;  // after the colon, folding kept, without the final CRLF
  std::string_view raw;    // the whole field without its final CRLF (what DKIM hashes)
  std::size_t offset = 0;  // of raw in the message
};

struct HeaderSection {
  std::vector<HeaderField> fields;
  std::size_t body_offset = 0;  // first octet of the body (after the empty line), or size()
  bool malformed = false;       // a line without a colon, or a leading continuation line
};

// Splits the header section of `message`. Never fails: a line without a colon ends up as a
// field with an empty name and sets `malformed`. The views point into `message`.
HeaderSection split_header(std::string_view message);

struct HeaderRemoval {
  std::string name;
  std::size_t occurrence = 0;
  bool operator==(const HeaderRemoval&) const = default;
};

// `message` without the header fields named in `removals` (each removal that matches no field
// is ignored). The body and every other octet are unchanged.
std::string remove_header_fields(std::string_view message,
                                 const std::vector<HeaderRemoval>& removals);

// ASCII case-insensitive comparison for header field names.
bool field_name_is(std::string_view name, std::string_view wanted);

}  // namespace moat::policy
