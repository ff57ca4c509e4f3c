// Mime: Moat's own model of a message, parsed by GMime 3 and flattened for content rules.
// Headers are unfolded and RFC 2047-decoded to UTF-8; leaf parts carry their decoded body
// (base64 / quoted-printable undone), text converted to UTF-8, the attachment name (RFC 2231 /
// 2047 decoded), the true type found by content (libmagic) and, for zip archives, the listing
// of their entries with each entry's true type.
// Malformed structure never fails the parse: it becomes an issue ("mime.bad_boundary",
// "mime.duplicate_header", ...) next to whatever could be recovered. Work is bounded by
// MimeLimits (depth, part count, decoded bytes, zip entries), so no input can make it hang.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace moat::scanners {

struct MimeLimits {
  std::size_t max_depth = 16;            // nesting of multiparts / message/rfc822
  std::size_t max_parts = 256;           // leaf parts kept; more → mime.too_many_parts
  std::size_t max_decoded = 32u << 20;   // decoded bytes kept over the whole message
  std::size_t max_zip_entries = 1000;    // entries listed per archive
  std::size_t magic_bytes = 1u << 20;    // bytes libmagic sees per part / zip entry
};

struct MimeHeader {
  std::string name;   // as written ("Subject")
  std::string value;  // unfolded, RFC 2047 decoded, UTF-8
};

// A malformed-structure observation; name is a stable finding name ("mime.bad_boundary").
struct MimeIssue {
  std::string name;
  std::string detail;
};

struct ZipEntry {
  std::string name;       // path inside the archive, as stored
  std::string true_type;  // libmagic MIME type of the entry's first bytes; "" if unreadable
  bool encrypted = false;
};

struct MimePart {
  std::string id;            // position in the tree: "1", "2.1", ... ("1" for a single-part message)
  std::string content_type;  // lower case "type/subtype" as declared
  std::string filename;      // decoded attachment name (Content-Disposition or Content-Type name)
  bool attachment = false;   // Content-Disposition: attachment, or has a file name
  std::string true_type;     // libmagic MIME type of the decoded body
  std::string text;          // text/* parts: decoded body in UTF-8
  std::string data;          // other parts: decoded bytes (possibly truncated, see issues)
  std::vector<ZipEntry> zip_entries;  // when the body is a zip archive
  std::size_t depth = 0;

  bool is_html() const { return content_type == "text/html"; }
  // "part 2.1 (invoice.zip)": how a hit names the part.
  std::string describe() const;
};

struct MimeMessage {
  std::vector<MimeHeader> headers;  // top-level headers in order
  std::string subject;              // decoded
  std::string from_display;         // display name of the first From address, decoded
  std::string from_address;         // addr-spec of the first From address
  std::vector<MimePart> parts;      // leaf parts in document order
  std::vector<std::string> urls;    // http(s)/www URLs found in text and HTML bodies
  std::vector<MimeIssue> issues;

  // Values of every top-level header named `name` (any case).
  std::vector<std::string_view> header_values(std::string_view name) const;
};

// Parses `raw` (header + body, CRLF or LF line ends). Never fails and never throws for any
// input: what cannot be understood becomes an issue. Thread-safe (libmagic handles are per
// thread); the first call initialises GMime.
MimeMessage parse_mime(std::string_view raw, const MimeLimits& limits = {});

// Crude HTML to text for rules on the visible text of HTML-only mail: drops tags, script and
// style content, decodes the common entities. Exposed for tests.
std::string html_to_text(std::string_view html);

// URLs (http://, https://, www.) in `text`, in order, duplicates removed, at most `max`.
std::vector<std::string> extract_urls(std::string_view text, std::size_t max = 1000);

// The lower-case host of a URL ("https://Login.Example.test:443/x" → "login.example.test").
std::string url_host(std::string_view url);

}  // namespace moat::scanners
