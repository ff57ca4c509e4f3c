// RFC 5321 §4.1.2 path syntax (with RFC 6531 UTF-8 when SMTPUTF8 is in force).
//   Path = "<" [ A-d-l ":" ] Mailbox ">"      Mailbox = Local-part "@" ( Domain / address-literal )
// The parser is strict about structure (brackets, one unquoted "@", label syntax) and keeps
// what the relay check needs to see through the classic tricks: the source route, whether the
// local part was quoted and what it holds once unquoted.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moat::policy {

struct Mailbox {
  std::string local;         // as on the wire, quotes included: "john doe" or john.doe
  std::string local_value;   // the local part with quoting undone: john doe
  std::string domain;        // as on the wire: Example.TEST. or [192.0.2.1]
  bool quoted = false;       // local part was a Quoted-string
  bool literal = false;      // domain is an address literal
  std::string address() const { return local + "@" + domain; }
};

struct Path {
  bool null = false;          // "<>" (reverse-path only)
  bool postmaster = false;    // "<Postmaster>" without a domain (RFC 5321 §4.5.1)
  bool source_route = false;  // "<@a,@b:user@c>": the route is dropped, but remembered
  bool utf8 = false;          // holds non-ASCII octets (needs SMTPUTF8)
  Mailbox mailbox;
  // The address without brackets or route: "" for <>, "Postmaster" for <Postmaster>.
  std::string address() const;
};

enum class PathError { None, Syntax, NeedsUtf8 };

struct ParsedPath {
  Path path;
  PathError error = PathError::None;
  std::string reason;  // for the reply text when error != None
  bool ok() const { return error == PathError::None; }
};

// Parses exactly one bracketed path (the whole of `text`). `smtputf8`: the transaction
// declared SMTPUTF8, so UTF-8 local parts and U-label domains are allowed.
ParsedPath parse_path(std::string_view text, bool smtputf8);

// Length of the bracketed path at the start of `args` ("<...>", honouring quoted strings and
// quoted pairs so that a ">" inside quotes does not end it), or npos if there is none.
std::size_t path_length(std::string_view args);

// RFC 1035 host name / U-label domain check used for paths and EHLO arguments.
bool valid_domain(std::string_view domain, bool allow_utf8);
// Address literal check: "[192.0.2.1]", "[IPv6:2001:db8::1]" or a General-address-literal.
bool valid_address_literal(std::string_view literal);
bool valid_utf8(std::string_view s);

// ASCII case mapping (domains, ESMTP keywords); other octets are left alone.
std::string ascii_lower(std::string_view s);
std::string ascii_upper(std::string_view s);

}  // namespace moat::policy
