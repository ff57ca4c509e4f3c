// Tests for policy/address.hpp: the RFC 5321 §4.1.2 path grammar (RFC 6531 with SMTPUTF8).
// Expected values come from the RFC ABNF, not from running the parser.
#include "policy/address.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

namespace moat::policy {
namespace {

using namespace std::string_view_literals;

// Valid paths and what the parser must keep of them.
TEST_CASE("parse_path accepts valid paths and keeps their parts") {
  struct Row {
    std::string_view text;
    bool smtputf8;
    bool null, postmaster, source_route, utf8, quoted, literal;
    std::string_view local, local_value, domain, address;
  };
  // clang-format off
  const Row rows[] = {
    // RFC 5321 §4.1.1.2: the null reverse-path.
    {"<>", false, true, false, false, false, false, false, "", "", "", ""},
    // §4.5.1: <Postmaster> without a domain, in any case.
    {"<Postmaster>", false, false, true, false, false, false, false, "Postmaster", "Postmaster", "", "Postmaster"},
    {"<POSTMASTER>", false, false, true, false, false, false, false, "POSTMASTER", "POSTMASTER", "", "POSTMASTER"},
    {"<postmaster>", false, false, true, false, false, false, false, "postmaster", "postmaster", "", "postmaster"},
    // An ordinary postmaster@domain mailbox is a normal address.
    {"<postmaster@example.test>", false, false, false, false, false, false, false, "postmaster", "postmaster", "example.test", "postmaster@example.test"},
    // Dot-string local parts with the atext specials.
    {"<john.doe@example.test>", false, false, false, false, false, false, false, "john.doe", "john.doe", "example.test", "john.doe@example.test"},
    {"<a+tag@example.test>", false, false, false, false, false, false, false, "a+tag", "a+tag", "example.test", "a+tag@example.test"},
    {"<!#$%&'*+-/=?^_`{|}~@example.test>", false, false, false, false, false, false, false, "!#$%&'*+-/=?^_`{|}~", "!#$%&'*+-/=?^_`{|}~", "example.test", "!#$%&'*+-/=?^_`{|}~@example.test"},
    // Domain case and a trailing root dot are kept as on the wire.
    {"<u@Example.TEST.>", false, false, false, false, false, false, false, "u", "u", "Example.TEST.", "u@Example.TEST."},
    {"<u@a-b.c_d.example>", false, false, false, false, false, false, false, "u", "u", "a-b.c_d.example", "u@a-b.c_d.example"},
    // Quoted-string local parts: the value has the quoting undone.
    {"<\"john doe\"@example.test>", false, false, false, false, false, true, false, "\"john doe\"", "john doe", "example.test", "\"john doe\"@example.test"},
    {"<\"a\\\"b\"@example.test>", false, false, false, false, false, true, false, "\"a\\\"b\"", "a\"b", "example.test", "\"a\\\"b\"@example.test"},
    {"<\"a\\\\b\"@example.test>", false, false, false, false, false, true, false, "\"a\\\\b\"", "a\\b", "example.test", "\"a\\\\b\"@example.test"},
    {"<\"\\x\"@example.test>", false, false, false, false, false, true, false, "\"\\x\"", "x", "example.test", "\"\\x\"@example.test"},
    // "@", "%" and "!" are plain characters inside quotes: the parser keeps them for the relay check.
    {"<\"user@ext.test\"@example.test>", false, false, false, false, false, true, false, "\"user@ext.test\"", "user@ext.test", "example.test", "\"user@ext.test\"@example.test"},
    {"<\"user%ext.test\"@example.test>", false, false, false, false, false, true, false, "\"user%ext.test\"", "user%ext.test", "example.test", "\"user%ext.test\"@example.test"},
    {"<\"ext.test!user\"@example.test>", false, false, false, false, false, true, false, "\"ext.test!user\"", "ext.test!user", "example.test", "\"ext.test!user\"@example.test"},
    // A ">" inside quotes is part of the local part.
    {"<\"a>b\"@example.test>", false, false, false, false, false, true, false, "\"a>b\"", "a>b", "example.test", "\"a>b\"@example.test"},
    // Unquoted percent hack and bang path are syntactically valid (the relay check refuses them).
    {"<user%ext.test@example.test>", false, false, false, false, false, false, false, "user%ext.test", "user%ext.test", "example.test", "user%ext.test@example.test"},
    {"<ext.test!user@example.test>", false, false, false, false, false, false, false, "ext.test!user", "ext.test!user", "example.test", "ext.test!user@example.test"},
    // Source routes (§4.1.2, appendix C): parsed, flagged, dropped from the address.
    {"<@a.test:user@example.test>", false, false, false, true, false, false, false, "user", "user", "example.test", "user@example.test"},
    {"<@a.test,@b.test:user@c.test>", false, false, false, true, false, false, false, "user", "user", "c.test", "user@c.test"},
    // Address literals (§4.1.3).
    {"<u@[192.0.2.1]>", false, false, false, false, false, false, true, "u", "u", "[192.0.2.1]", "u@[192.0.2.1]"},
    {"<u@[IPv6:2001:db8::1]>", false, false, false, false, false, false, true, "u", "u", "[IPv6:2001:db8::1]", "u@[IPv6:2001:db8::1]"},
    // RFC 6531: UTF-8 local parts and U-label domains with SMTPUTF8.
    {"<j\xC3\xBCrgen@example.test>", true, false, false, false, true, false, false, "j\xC3\xBCrgen", "j\xC3\xBCrgen", "example.test", "j\xC3\xBCrgen@example.test"},
    {"<u@b\xC3\xBC\x63her.example>", true, false, false, false, true, false, false, "u", "u", "b\xC3\xBC\x63her.example", "u@b\xC3\xBC\x63her.example"},
    {"<\"\xE2\x82\xAC x\"@example.test>", true, false, false, false, true, true, false, "\"\xE2\x82\xAC x\"", "\xE2\x82\xAC x", "example.test", "\"\xE2\x82\xAC x\"@example.test"},
    // SMTPUTF8 does not change how an ASCII path parses.
    {"<u@example.test>", true, false, false, false, false, false, false, "u", "u", "example.test", "u@example.test"},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.text);
    CAPTURE(row.smtputf8);
    auto r = parse_path(row.text, row.smtputf8);
    CAPTURE(r.reason);
    REQUIRE(r.ok());
    CHECK(r.error == PathError::None);
    CHECK(r.path.null == row.null);
    CHECK(r.path.postmaster == row.postmaster);
    CHECK(r.path.source_route == row.source_route);
    CHECK(r.path.utf8 == row.utf8);
    CHECK(r.path.mailbox.quoted == row.quoted);
    CHECK(r.path.mailbox.literal == row.literal);
    CHECK(r.path.mailbox.local == row.local);
    CHECK(r.path.mailbox.local_value == row.local_value);
    CHECK(r.path.mailbox.domain == row.domain);
    CHECK(r.path.address() == row.address);
  }
}

TEST_CASE("parse_path refuses malformed paths") {
  struct Row {
    std::string_view text;
    bool smtputf8;
    PathError error;
  };
  // clang-format off
  const Row rows[] = {
    // Brackets are required (§4.1.2 Path = "<" ... ">").
    {"", false, PathError::Syntax},
    {"<", false, PathError::Syntax},
    {">", false, PathError::Syntax},
    {"user@example.test", false, PathError::Syntax},
    {"<user@example.test", false, PathError::Syntax},
    {"user@example.test>", false, PathError::Syntax},
    {" <user@example.test>", false, PathError::Syntax},
    {"<user@example.test> ", false, PathError::Syntax},
    // No domain, empty local part, empty domain.
    {"<user>", false, PathError::Syntax},
    {"<user@>", false, PathError::Syntax},
    {"<@example.test>", false, PathError::Syntax},
    // Only the bare word Postmaster may stand without a domain; not quoted, not routed.
    {"<Postmaster1>", false, PathError::Syntax},
    {"<\"Postmaster\">", false, PathError::Syntax},
    {"<@a.test:Postmaster>", false, PathError::Syntax},
    // user@ext@local: a second unquoted "@" (§4.1.2 allows one).
    {"<user@ext.test@example.test>", false, PathError::Syntax},
    {"<a@b@c>", false, PathError::Syntax},
    // Characters that are not atext in a Dot-string.
    {"<us er@example.test>", false, PathError::Syntax},
    {"<us\"er@example.test>", false, PathError::Syntax},
    {"<a,b@example.test>", false, PathError::Syntax},
    {"<a:b@example.test>", false, PathError::Syntax},
    {"<a\\b@example.test>", false, PathError::Syntax},
    {"<a(b)@example.test>", false, PathError::Syntax},
    {"<a[b]@example.test>", false, PathError::Syntax},
    // Quoted local parts: unterminated, text after the closing quote, bad quoted pairs.
    {"<\"abc@example.test>", false, PathError::Syntax},
    {"<\"abc\"def@example.test>", false, PathError::Syntax},
    {"<\"abc\\\">", false, PathError::Syntax},
    {"<\"a\\\tb\"@example.test>", false, PathError::Syntax},
    {"<\"a\tb\"@example.test>", false, PathError::Syntax},
    // quoted-pairSMTP is %d92 %d32-126; RFC 6531 widens qtext to UTF-8, not quoted pairs.
    {"<\"a\\\xC3\xBC\"@example.test>", true, PathError::Syntax},
    // Bad domains (RFC 1035 labels: letters, digits, inner hyphens).
    {"<u@-example.test>", false, PathError::Syntax},
    {"<u@example-.test>", false, PathError::Syntax},
    {"<u@exa mple.test>", false, PathError::Syntax},
    {"<u@example..test>", false, PathError::Syntax},
    {"<u@.example.test>", false, PathError::Syntax},
    {"<u@example.test..>", false, PathError::Syntax},
    {"<u@ex!ample.test>", false, PathError::Syntax},
    {"<u@ex%ample.test>", false, PathError::Syntax},
    {"<u@ex:ample.test>", false, PathError::Syntax},
    // Bad address literals.
    {"<u@[192.0.2.256]>", false, PathError::Syntax},
    {"<u@[192.0.2]>", false, PathError::Syntax},
    {"<u@[IPv6:2001:db8::g]>", false, PathError::Syntax},
    {"<u@[]>", false, PathError::Syntax},
    {"<u@[192.0.2.1>", false, PathError::Syntax},
    {"<u@192.0.2.1]>", false, PathError::Syntax},
    // Bad source routes.
    {"<@a.test user@example.test>", false, PathError::Syntax},
    {"<@:user@example.test>", false, PathError::Syntax},
    {"<@a.test,b.test:user@example.test>", false, PathError::Syntax},
    {"<@a.test,:user@example.test>", false, PathError::Syntax},
    {"<@-a.test:user@example.test>", false, PathError::Syntax},
    {"<@a.test:@example.test>", false, PathError::Syntax},
    // Non-ASCII without SMTPUTF8 (RFC 6531 §3.4): a distinct error, whatever else is wrong.
    {"<j\xC3\xBCrgen@example.test>", false, PathError::NeedsUtf8},
    {"<u@b\xC3\xBC\x63her.example>", false, PathError::NeedsUtf8},
    {"<\"\xC3\xBC\"@example.test>", false, PathError::NeedsUtf8},
    // Invalid UTF-8 is refused even with SMTPUTF8.
    {"<j\xFCrgen@example.test>", true, PathError::Syntax},       // Latin-1, not UTF-8
    {"<j\xC3@example.test>", true, PathError::Syntax},           // truncated sequence
    {"<\xC0\xAF@example.test>", true, PathError::Syntax},        // overlong "/"
    {"<\xED\xA0\x80@example.test>", true, PathError::Syntax},    // UTF-16 surrogate
    {"<u@\xFF.example>", true, PathError::Syntax},
    // Control characters, quoted or not, anywhere in the path.
    {"<u\x01@example.test>", false, PathError::Syntax},
    {"<u@exam\x7Fple.test>", false, PathError::Syntax},
    {"<\"a\x00"
     "b\"@example.test>"sv, false, PathError::Syntax},
    {"<u@example.test\r>", false, PathError::Syntax},
    {"<u@example.test\n>", true, PathError::Syntax},
    {"<\"a\\\x01\"@example.test>", false, PathError::Syntax},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.text);
    CAPTURE(row.smtputf8);
    auto r = parse_path(row.text, row.smtputf8);
    CAPTURE(r.reason);
    CHECK_FALSE(r.ok());
    CHECK(r.error == row.error);
    CHECK_FALSE(r.reason.empty());
  }
}

TEST_CASE("path_length finds the end of the bracketed path") {
  constexpr auto npos = std::string_view::npos;
  struct Row {
    std::string_view args;
    std::size_t length;
  };
  // clang-format off
  const Row rows[] = {
    {"<>", 2},
    {"<> SIZE=10", 2},
    {"<a@b>", 5},
    {"<a@b> BODY=8BITMIME", 5},
    {"<a@b>>", 5},
    // ">" inside a quoted string does not end the path; nor does a quoted '"'.
    {"<\"a>b\"@c>", 9},
    {"<\"a>b\"@c> SIZE=1", 9},
    {"<\"a\\\">b\"@c>", 11},
    {"<\"a\\\\\"@c>", 9},
    // No path.
    {"", npos},
    {"a@b", npos},
    {" <a@b>", npos},
    {"<a@b", npos},
    {"<\"a>b@c>", npos},   // the quote never closes
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.args);
    CHECK(path_length(row.args) == row.length);
  }
}

TEST_CASE("valid_domain follows RFC 1035 label syntax") {
  struct Row {
    std::string domain;
    bool allow_utf8;
    bool valid;
  };
  const std::string label63(63, 'a');
  const std::string label64(64, 'a');
  // RFC 5321 §4.5.3.1.2: at most 255 octets. Labels 63+63+63+61+1 and four dots make 255.
  const std::string name255 =
      label63 + "." + label63 + "." + label63 + "." + std::string(61, 'b') + ".c";
  const std::string name256 =
      label63 + "." + label63 + "." + label63 + "." + std::string(62, 'b') + ".c";
  REQUIRE(name255.size() == 255);
  REQUIRE(name256.size() == 256);
  // clang-format off
  const Row rows[] = {
    {"example.test", false, true},
    {"EXAMPLE.test", false, true},
    {"example.test.", false, true},          // trailing root dot tolerated
    {"localhost", false, true},
    {"a", false, true},
    {"1.example", false, true},
    {"a-b.example", false, true},
    {"a--b.example", false, true},
    {"mail_1.example", false, true},         // "_" inside a label tolerated (real HELO names)
    {label63 + ".example", false, true},
    {name255, false, true},
    {"", false, false},
    {".", false, false},
    {"example.test..", false, false},
    {".example.test", false, false},
    {"example..test", false, false},
    {"-example.test", false, false},
    {"example-.test", false, false},
    {"example.-test", false, false},
    {"_mail.example", false, false},
    {"mail_.example", false, false},
    {label64 + ".example", false, false},
    {name256, false, false},
    {"exa mple.test", false, false},
    {"exa@mple.test", false, false},
    {"[192.0.2.1]", false, false},           // literals are not domains
    {"b\xC3\xBC\x63her.example", false, false},
    {"b\xC3\xBC\x63her.example", true, true},
    {"b\xFC\x63her.example", true, false},   // not UTF-8
    {"b\xC3.example", true, false},          // truncated UTF-8 sequence
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.domain);
    CAPTURE(row.allow_utf8);
    CHECK(valid_domain(row.domain, row.allow_utf8) == row.valid);
  }
}

TEST_CASE("valid_utf8 accepts exactly well-formed UTF-8 (RFC 3629)") {
  struct Row {
    std::string_view text;
    bool valid;
  };
  // clang-format off
  const Row rows[] = {
    {"", true},
    {"plain ascii", true},
    {"\x7F", true},
    {"\xC2\x80", true},                  // U+0080, smallest 2-octet
    {"\xDF\xBF", true},                  // U+07FF
    {"\xE0\xA0\x80", true},              // U+0800, smallest 3-octet
    {"\xED\x9F\xBF", true},              // U+D7FF, just below the surrogates
    {"\xEE\x80\x80", true},              // U+E000, just above them
    {"\xEF\xBF\xBF", true},              // U+FFFF
    {"\xF0\x90\x80\x80", true},          // U+10000, smallest 4-octet
    {"\xF4\x8F\xBF\xBF", true},          // U+10FFFF, the last code point
    {"j\xC3\xBCrgen \xE2\x82\xAC \xF0\x9F\x93\xA7", true},
    // Overlong forms.
    {"\xC0\x80", false},
    {"\xC1\xBF", false},
    {"\xE0\x80\x80", false},
    {"\xE0\x9F\xBF", false},
    {"\xF0\x80\x80\x80", false},
    {"\xF0\x8F\xBF\xBF", false},
    // Surrogates U+D800..U+DFFF.
    {"\xED\xA0\x80", false},
    {"\xED\xBF\xBF", false},
    // Beyond U+10FFFF and lead octets that never occur.
    {"\xF4\x90\x80\x80", false},
    {"\xF5\x80\x80\x80", false},
    {"\xF8\x88\x80\x80\x80", false},
    {"\xFE", false},
    {"\xFF", false},
    // Lone or missing continuation octets.
    {"\x80", false},
    {"a\xBF", false},
    {"\xC3", false},
    {"\xC3z", false},
    {"\xE2\x82", false},
    {"\xE2\x82z", false},
    {"\xF0\x9F\x93", false},
    {"\xC3\xBC\xBC", false},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.text);
    CHECK(valid_utf8(row.text) == row.valid);
  }
}

TEST_CASE("valid_address_literal follows RFC 5321 §4.1.3") {
  struct Row {
    std::string_view literal;
    bool valid;
  };
  // clang-format off
  const Row rows[] = {
    {"[192.0.2.1]", true},
    {"[0.0.0.0]", true},
    {"[255.255.255.255]", true},
    {"[IPv6:2001:db8::1]", true},
    {"[ipv6:2001:db8::1]", true},          // ABNF strings are case-insensitive
    {"[IPv6:::1]", true},
    {"[IPv6:2001:db8:0:0:0:0:0:1]", true},
    {"[IPv6:::ffff:192.0.2.1]", true},
    {"[x-tag:some-content]", true},        // General-address-literal
    {"", false},
    {"[]", false},
    {"192.0.2.1", false},
    {"[192.0.2.1", false},
    {"192.0.2.1]", false},
    {"[192.0.2.256]", false},
    {"[192.0.2]", false},
    {"[192.0.2.1.5]", false},
    {"[ 192.0.2.1]", false},
    {"[IPv6:]", false},
    {"[IPv6:192.0.2.1]", false},
    {"[IPv6:2001:db8::g]", false},
    {"[IPv6:2001:db8:::1]", false},
    {"[:content]", false},
    {"[tag:]", false},
    {"[ta g:content]", false},
    {"[tag:con tent]", false},
    {"[tag:con[tent]", false},
    {"[tag:con\\tent]", false},
    {"[tag:con]tent]", false},
    // An embedded NUL must not cut the literal short.
    {"[192.0.2.1\0junk]"sv, false},
    {"[IPv6:::1\0junk]"sv, false},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.literal);
    CHECK(valid_address_literal(row.literal) == row.valid);
  }
}

}  // namespace
}  // namespace moat::policy
