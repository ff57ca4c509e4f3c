// Tests for gateway/smtp/command.hpp: the verb table and the MAIL/RCPT/BDAT argument grammar
// (RFC 5321 §4.1, SIZE RFC 1870, 8BITMIME RFC 6152, SMTPUTF8 RFC 6531, DSN RFC 3461).
// Reply codes come from those RFCs and RFC 3463: 501 + 5.5.4 for bad arguments, 555 for
// parameters not recognized (RFC 5321 §4.1.1.11), 552 5.3.4 for a declared size over the limit
// (RFC 1870 §6), 501 5.1.7 / 5.1.3 for bad sender / recipient syntax, 553 5.6.7 for a non-ASCII
// address without SMTPUTF8 (RFC 6531 §3.5).
#include "gateway/smtp/command.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moat::gateway {
namespace {

using policy::Reply;

constexpr std::uint64_t kMax = 10 * 1024 * 1024;

std::string show(const std::optional<Reply>& r) {
  if (!r) return "(accepted)";
  return std::to_string(r->code) + " " + r->enhanced + " " + r->text;
}

TEST_CASE("parse_command: verbs are case-insensitive, anything else is Unknown") {
  struct Row {
    std::string_view line;
    Verb verb;
    std::string_view args;
  };
  // clang-format off
  const Row rows[] = {
    {"EHLO client.example", Verb::Ehlo, "client.example"},
    {"ehlo client.example", Verb::Ehlo, "client.example"},
    {"HeLo client.example", Verb::Helo, "client.example"},
    {"MAIL FROM:<a@b.test>", Verb::Mail, "FROM:<a@b.test>"},
    {"mail from:<a@b.test> SIZE=5", Verb::Mail, "from:<a@b.test> SIZE=5"},
    {"RCPT TO:<a@b.test>", Verb::Rcpt, "TO:<a@b.test>"},
    {"DATA", Verb::Data, ""},
    {"data", Verb::Data, ""},
    {"BDAT 100 LAST", Verb::Bdat, "100 LAST"},
    {"RSET", Verb::Rset, ""},
    {"NOOP", Verb::Noop, ""},
    {"NOOP anything at all", Verb::Noop, "anything at all"},
    {"QUIT", Verb::Quit, ""},
    {"VRFY user", Verb::Vrfy, "user"},
    {"EXPN list", Verb::Expn, "list"},
    {"HELP", Verb::Help, ""},
    {"StartTLS", Verb::StartTls, ""},
    {"STARTTLS", Verb::StartTls, ""},
    {"MAIL  FROM:<a@b.test>", Verb::Mail, " FROM:<a@b.test>"},   // args start after one space
    {"DATA ", Verb::Data, ""},
    // Not verbs.
    {"", Verb::Unknown, ""},
    {" DATA", Verb::Unknown, "DATA"},
    {"DATAX", Verb::Unknown, ""},
    {"DAT", Verb::Unknown, ""},
    {"MAIL:FROM:<a@b.test>", Verb::Unknown, ""},
    {"MAIL\tFROM:<a@b.test>", Verb::Unknown, ""},          // only a space separates
    {"AUTH PLAIN xyz", Verb::Unknown, "PLAIN xyz"},
    {"GET / HTTP/1.1", Verb::Unknown, "/ HTTP/1.1"},
    {"\xC3\x89HLO x", Verb::Unknown, "x"},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.line);
    auto cmd = parse_command(row.line);
    CHECK(cmd.verb == row.verb);
    if (row.verb != Verb::Unknown || !row.args.empty()) CHECK(cmd.args == row.args);
  }
}

TEST_CASE("parse_mail: accepted forms fill the envelope") {
  struct Row {
    std::string_view args;
    std::string_view sender;  // Path::address()
    bool null_sender;
    std::optional<std::uint64_t> size;
    std::string_view body;
    bool smtputf8;
    std::string_view ret;
    std::string_view envid;
  };
  // clang-format off
  const Row rows[] = {
    {"FROM:<a@example.test>", "a@example.test", false, std::nullopt, "", false, "", ""},
    {"from:<a@example.test>", "a@example.test", false, std::nullopt, "", false, "", ""},
    {"FROM:<>", "", true, std::nullopt, "", false, "", ""},
    // A space after the colon is tolerated, as most servers do.
    {"FROM: <a@example.test>", "a@example.test", false, std::nullopt, "", false, "", ""},
    {"FROM:  <>", "", true, std::nullopt, "", false, "", ""},
    // SIZE (RFC 1870): up to and including the maximum.
    {"FROM:<a@example.test> SIZE=0", "a@example.test", false, 0, "", false, "", ""},
    {"FROM:<a@example.test> SIZE=1000", "a@example.test", false, 1000, "", false, "", ""},
    {"FROM:<a@example.test> SIZE=10485760", "a@example.test", false, kMax, "", false, "", ""},
    {"FROM:<a@example.test> size=42", "a@example.test", false, 42, "", false, "", ""},
    // BODY (RFC 6152).
    {"FROM:<a@example.test> BODY=7BIT", "a@example.test", false, std::nullopt, "7BIT", false, "", ""},
    {"FROM:<a@example.test> BODY=8BITMIME", "a@example.test", false, std::nullopt, "8BITMIME", false, "", ""},
    {"FROM:<a@example.test> body=8bitmime", "a@example.test", false, std::nullopt, "8BITMIME", false, "", ""},
    // SMTPUTF8 (RFC 6531), which also allows a UTF-8 path.
    {"FROM:<a@example.test> SMTPUTF8", "a@example.test", false, std::nullopt, "", true, "", ""},
    {"FROM:<j\xC3\xBCrgen@b\xC3\xBC\x63her.example> SMTPUTF8", "j\xC3\xBCrgen@b\xC3\xBC\x63her.example", false, std::nullopt, "", true, "", ""},
    {"FROM:<j\xC3\xBCrgen@example.test> smtputf8 BODY=8BITMIME", "j\xC3\xBCrgen@example.test", false, std::nullopt, "8BITMIME", true, "", ""},
    // DSN (RFC 3461): RET and ENVID (xtext, kept as received).
    {"FROM:<a@example.test> RET=FULL", "a@example.test", false, std::nullopt, "", false, "FULL", ""},
    {"FROM:<a@example.test> RET=hdrs", "a@example.test", false, std::nullopt, "", false, "HDRS", ""},
    {"FROM:<a@example.test> ENVID=QQ314159", "a@example.test", false, std::nullopt, "", false, "", "QQ314159"},
    {"FROM:<a@example.test> ENVID=a+2Bb+3Dc", "a@example.test", false, std::nullopt, "", false, "", "a+2Bb+3Dc"},
    // Everything at once, in any order, with extra spaces between parameters.
    {"FROM:<> RET=HDRS  ENVID=x SIZE=1 BODY=7BIT SMTPUTF8", "", true, 1, "7BIT", true, "HDRS", "x"},
    // Quoted local parts, including a ">" inside the quotes.
    {"FROM:<\"a b\"@example.test> SIZE=5", "\"a b\"@example.test", false, 5, "", false, "", ""},
    {"FROM:<\"a>b\"@example.test>", "\"a>b\"@example.test", false, std::nullopt, "", false, "", ""},
    // A source route is accepted in MAIL and dropped (RFC 5321 §4.1.2 / appendix C).
    {"FROM:<@relay.test:a@example.test>", "a@example.test", false, std::nullopt, "", false, "", ""},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.args);
    policy::Envelope env;
    env.recipients.push_back({});  // a new MAIL starts a new envelope
    auto reply = parse_mail(row.args, kMax, env);
    CAPTURE(show(reply));
    REQUIRE_FALSE(reply.has_value());
    CHECK(env.sender.address() == row.sender);
    CHECK(env.sender.null == row.null_sender);
    CHECK(env.declared_size == row.size);
    CHECK(env.body == row.body);
    CHECK(env.smtputf8 == row.smtputf8);
    CHECK(env.ret == row.ret);
    CHECK(env.envid == row.envid);
    CHECK(env.recipients.empty());
  }
}

TEST_CASE("parse_mail: refusals carry the exact reply") {
  struct Row {
    std::string_view args;
    int code;
    std::string_view enhanced;
  };
  const std::string long_envid = "FROM:<a@example.test> ENVID=" + std::string(101, 'x');
  // clang-format off
  const Row rows[] = {
    // The command itself is malformed.
    {"", 501, "5.5.4"},
    {"FROM", 501, "5.5.4"},
    {"TO:<a@example.test>", 501, "5.5.4"},
    {"FROM <a@example.test>", 501, "5.5.4"},
    {"FROM:<a@example.test>SIZE=5", 501, "5.5.4"},
    // SIZE.
    {"FROM:<a@example.test> SIZE=10485761", 552, "5.3.4"},
    {"FROM:<a@example.test> SIZE=99999999999999999999", 552, "5.3.4"},   // past 2^64: still too big
    {"FROM:<a@example.test> SIZE", 501, "5.5.4"},
    {"FROM:<a@example.test> SIZE=", 501, "5.5.4"},
    {"FROM:<a@example.test> SIZE=-1", 501, "5.5.4"},
    {"FROM:<a@example.test> SIZE=+1", 501, "5.5.4"},
    {"FROM:<a@example.test> SIZE=12k", 501, "5.5.4"},
    {"FROM:<a@example.test> SIZE=0x10", 501, "5.5.4"},
    {"FROM:<a@example.test> SIZE=123456789012345678901", 501, "5.5.4"},  // 21 digits: not a SIZE
    // BODY.
    {"FROM:<a@example.test> BODY", 501, "5.5.4"},
    {"FROM:<a@example.test> BODY=9BIT", 501, "5.5.4"},
    // SMTPUTF8 takes no value; RET must be FULL or HDRS; ENVID must be xtext of at most 100.
    {"FROM:<a@example.test> SMTPUTF8=yes", 501, "5.5.4"},
    {"FROM:<a@example.test> RET=ALL", 501, "5.5.4"},
    {"FROM:<a@example.test> RET", 501, "5.5.4"},
    {"FROM:<a@example.test> ENVID", 501, "5.5.4"},
    {"FROM:<a@example.test> ENVID=a+2b", 501, "5.5.4"},      // hex must be upper case
    {"FROM:<a@example.test> ENVID=a+2", 501, "5.5.4"},
    {"FROM:<a@example.test> ENVID=a+", 501, "5.5.4"},
    {"FROM:<a@example.test> ENVID=a+ZZ", 501, "5.5.4"},
    {"FROM:<a@example.test> ENVID=a=b", 501, "5.5.4"},
    {long_envid, 501, "5.5.4"},
    // Parameter syntax.
    {"FROM:<a@example.test> =5", 501, "5.5.4"},
    {"FROM:<a@example.test> -X=5", 501, "5.5.4"},
    {"FROM:<a@example.test> X_Y=5", 501, "5.5.4"},
    // Duplicates, in any case.
    {"FROM:<a@example.test> SIZE=1 SIZE=1", 501, "5.5.4"},
    {"FROM:<a@example.test> SIZE=1 size=2", 501, "5.5.4"},
    {"FROM:<a@example.test> BODY=7BIT BODY=8BITMIME", 501, "5.5.4"},
    {"FROM:<a@example.test> SMTPUTF8 SMTPUTF8", 501, "5.5.4"},
    {"FROM:<a@example.test> RET=FULL RET=FULL", 501, "5.5.4"},
    {"FROM:<a@example.test> ENVID=a ENVID=b", 501, "5.5.4"},
    // Unknown parameters (RFC 5321 §4.1.1.11): 555.
    {"FROM:<a@example.test> AUTH=<>", 555, "5.5.4"},
    {"FROM:<a@example.test> X-FOO", 555, "5.5.4"},
    {"FROM:<a@example.test> NOTIFY=NEVER", 555, "5.5.4"},    // an RCPT parameter
    {"FROM:<a@example.test> HOLDFOR=10", 555, "5.5.4"},
    // Bad sender syntax: 501 5.1.7 (RFC 3463 "bad sender's mailbox address syntax").
    {"FROM:<a>", 501, "5.1.7"},
    {"FROM:<a@>", 501, "5.1.7"},
    {"FROM:<a@b@example.test>", 501, "5.1.7"},
    {"FROM:<a b@example.test>", 501, "5.1.7"},
    {"FROM:<a@-example.test>", 501, "5.1.7"},
    {"FROM:<a@[192.0.2.999]>", 501, "5.1.7"},
    // After "FROM:", a missing or unterminated path is bad sender syntax too.
    {"FROM:", 501, "5.1.7"},
    {"FROM: ", 501, "5.1.7"},
    {"FROM:a@example.test", 501, "5.1.7"},
    {"FROM:<a@example.test", 501, "5.1.7"},
    {"FROM:a@example.test>", 501, "5.1.7"},
    {"FROM:<\"unterminated@example.test>", 501, "5.1.7"},
    {"FROM:<a@exa\x01mple.test>", 501, "5.1.7"},
    {"FROM:<j\xC3@example.test> SMTPUTF8", 501, "5.1.7"},     // invalid UTF-8
    // <Postmaster> is a recipient form only (RFC 5321 §4.5.1); a sender needs a domain.
    {"FROM:<Postmaster>", 501, "5.1.7"},
    // Non-ASCII address without SMTPUTF8 (RFC 6531 §3.5).
    {"FROM:<j\xC3\xBCrgen@example.test>", 553, "5.6.7"},
    {"FROM:<a@b\xC3\xBC\x63her.example>", 553, "5.6.7"},
    {"FROM:<j\xC3\xBCrgen@example.test> BODY=8BITMIME", 553, "5.6.7"},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.args);
    policy::Envelope env;
    env.envid = "untouched";
    auto reply = parse_mail(row.args, kMax, env);
    CAPTURE(show(reply));
    REQUIRE(reply.has_value());
    CHECK(reply->code == row.code);
    CHECK(reply->enhanced == row.enhanced);
    CHECK_FALSE(reply->text.empty());
    CHECK(env.envid == "untouched");  // a refused MAIL leaves the envelope alone
  }
}

TEST_CASE("parse_mail: BODY=BINARYMIME is refused (not offered: no CHUNKING binary support)") {
  for (std::string_view args : {"FROM:<a@example.test> BODY=BINARYMIME",
                                "FROM:<a@example.test> body=binarymime SMTPUTF8"}) {
    CAPTURE(args);
    policy::Envelope env;
    auto reply = parse_mail(args, kMax, env);
    CAPTURE(show(reply));
    REQUIRE(reply.has_value());
    CHECK(reply->code / 100 == 5);
    CHECK(reply->enhanced.rfind("5.", 0) == 0);
    CHECK(env.body.empty());
  }
}

TEST_CASE("parse_rcpt: accepted forms fill the recipient") {
  struct Row {
    std::string_view args;
    bool smtputf8;
    std::string_view address;
    bool postmaster;
    std::string_view notify;
    std::string_view orcpt;
  };
  // clang-format off
  const Row rows[] = {
    {"TO:<b@example.test>", false, "b@example.test", false, "", ""},
    {"to:<b@example.test>", false, "b@example.test", false, "", ""},
    {"TO: <b@example.test>", false, "b@example.test", false, "", ""},
    {"TO:<Postmaster>", false, "Postmaster", true, "", ""},
    {"TO:<postmaster>", false, "postmaster", true, "", ""},
    {"TO:<\"b c\"@example.test>", false, "\"b c\"@example.test", false, "", ""},
    // NOTIFY (RFC 3461 §4.1): NEVER alone, or a list of SUCCESS, FAILURE, DELAY.
    {"TO:<b@example.test> NOTIFY=NEVER", false, "b@example.test", false, "NEVER", ""},
    {"TO:<b@example.test> NOTIFY=SUCCESS", false, "b@example.test", false, "SUCCESS", ""},
    {"TO:<b@example.test> NOTIFY=FAILURE,DELAY", false, "b@example.test", false, "FAILURE,DELAY", ""},
    {"TO:<b@example.test> NOTIFY=SUCCESS,FAILURE,DELAY", false, "b@example.test", false, "SUCCESS,FAILURE,DELAY", ""},
    {"TO:<b@example.test> notify=delay,success", false, "b@example.test", false, "DELAY,SUCCESS", ""},
    // ORCPT (RFC 3461 §4.2): addr-type ";" xtext, kept as received.
    {"TO:<b@example.test> ORCPT=rfc822;b@example.test", false, "b@example.test", false, "", "rfc822;b@example.test"},
    {"TO:<b@example.test> ORCPT=RFC822;b+2Bx@example.test", false, "b@example.test", false, "", "RFC822;b+2Bx@example.test"},
    {"TO:<b@example.test> NOTIFY=FAILURE ORCPT=rfc822;b@example.test", false, "b@example.test", false, "FAILURE", "rfc822;b@example.test"},
    // RFC 6533: utf-8 address type only with SMTPUTF8.
    {"TO:<b@example.test> ORCPT=utf-8;j\xC3\xBCrgen@example.test", true, "b@example.test", false, "", "utf-8;j\xC3\xBCrgen@example.test"},
    // SMTPUTF8 transaction: UTF-8 recipients.
    {"TO:<j\xC3\xBCrgen@example.test>", true, "j\xC3\xBCrgen@example.test", false, "", ""},
    // A source route is parsed and flagged (the relay check refuses it), not a syntax error.
    {"TO:<@example.test:b@ext.test>", false, "b@ext.test", false, "", ""},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.args);
    CAPTURE(row.smtputf8);
    policy::Recipient rcpt;
    auto reply = parse_rcpt(row.args, row.smtputf8, rcpt);
    CAPTURE(show(reply));
    REQUIRE_FALSE(reply.has_value());
    CHECK(rcpt.address == row.address);
    CHECK(rcpt.path.address() == row.address);
    CHECK(rcpt.path.postmaster == row.postmaster);
    CHECK(rcpt.notify == row.notify);
    CHECK(rcpt.orcpt == row.orcpt);
  }
  policy::Recipient routed;
  REQUIRE_FALSE(parse_rcpt("TO:<@example.test:b@ext.test>", false, routed).has_value());
  CHECK(routed.path.source_route);
}

TEST_CASE("parse_rcpt: refusals carry the exact reply") {
  struct Row {
    std::string_view args;
    bool smtputf8;
    int code;
    std::string_view enhanced;
  };
  const std::string long_orcpt = "TO:<b@example.test> ORCPT=rfc822;" + std::string(500, 'x');
  // clang-format off
  const Row rows[] = {
    // Command syntax.
    {"", false, 501, "5.5.4"},
    {"TO", false, 501, "5.5.4"},
    {"FROM:<b@example.test>", false, 501, "5.5.4"},
    {"TO <b@example.test>", false, 501, "5.5.4"},
    {"TO:<b@example.test>NOTIFY=NEVER", false, 501, "5.5.4"},
    // After "TO:", a missing or unterminated path is bad recipient syntax.
    {"TO:", false, 501, "5.1.3"},
    {"TO:b@example.test", false, 501, "5.1.3"},
    {"TO:<b@example.test", false, 501, "5.1.3"},
    {"TO:<\"b>@example.test", false, 501, "5.1.3"},
    // NOTIFY: NEVER is exclusive; items once each; nothing else.
    {"TO:<b@example.test> NOTIFY=NEVER,SUCCESS", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY=SUCCESS,NEVER", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY=SUCCESS,SUCCESS", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY=success,SUCCESS", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY=SUCCESS,", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY=,SUCCESS", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY=ALWAYS", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY=", false, 501, "5.5.4"},
    // ORCPT.
    {"TO:<b@example.test> ORCPT", false, 501, "5.5.4"},
    {"TO:<b@example.test> ORCPT=b@example.test", false, 501, "5.5.4"},   // no addr-type
    {"TO:<b@example.test> ORCPT=;b@example.test", false, 501, "5.5.4"},
    {"TO:<b@example.test> ORCPT=rfc822;", false, 501, "5.5.4"},
    {"TO:<b@example.test> ORCPT=rfc822;b+2b@example.test", false, 501, "5.5.4"},  // xtext hex is upper case
    {"TO:<b@example.test> ORCPT=x-unknown;b@example.test", false, 501, "5.5.4"},
    {"TO:<b@example.test> ORCPT=utf-8;b@example.test", false, 501, "5.5.4"},   // needs SMTPUTF8
    {long_orcpt, false, 501, "5.5.4"},
    // Duplicates, in any case.
    {"TO:<b@example.test> NOTIFY=NEVER NOTIFY=NEVER", false, 501, "5.5.4"},
    {"TO:<b@example.test> NOTIFY=NEVER notify=SUCCESS", false, 501, "5.5.4"},
    {"TO:<b@example.test> ORCPT=rfc822;a@b ORCPT=rfc822;a@b", false, 501, "5.5.4"},
    // Unknown parameters: 555; MAIL-only parameters are unknown here.
    {"TO:<b@example.test> SIZE=5", false, 555, "5.5.4"},
    {"TO:<b@example.test> X-FOO=1", false, 555, "5.5.4"},
    {"TO:<b@example.test> RRVS=2030-01-01T00:00:00Z", false, 555, "5.5.4"},
    // Bad recipient syntax: 501 5.1.3 (RFC 3463 "bad destination mailbox address syntax").
    {"TO:<>", false, 501, "5.1.3"},           // the null path is a reverse-path only
    {"TO:<b>", false, 501, "5.1.3"},
    {"TO:<b@>", false, 501, "5.1.3"},
    {"TO:<b@ext.test@example.test>", false, 501, "5.1.3"},    // user@ext@local
    {"TO:<b c@example.test>", false, 501, "5.1.3"},
    {"TO:<b@example..test>", false, 501, "5.1.3"},
    {"TO:<b@[IPv6:zz::1]>", false, 501, "5.1.3"},
    {"TO:<\"Postmaster\">", false, 501, "5.1.3"},
    {"TO:<@example.test,:b@ext.test>", false, 501, "5.1.3"},
    {"TO:<j\xC3@example.test>", true, 501, "5.1.3"},         // invalid UTF-8
    // Non-ASCII address without SMTPUTF8.
    {"TO:<j\xC3\xBCrgen@example.test>", false, 553, "5.6.7"},
    {"TO:<b@b\xC3\xBC\x63her.example>", false, 553, "5.6.7"},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.args);
    CAPTURE(row.smtputf8);
    policy::Recipient rcpt;
    rcpt.address = "untouched";
    auto reply = parse_rcpt(row.args, row.smtputf8, rcpt);
    CAPTURE(show(reply));
    REQUIRE(reply.has_value());
    CHECK(reply->code == row.code);
    CHECK(reply->enhanced == row.enhanced);
    CHECK_FALSE(reply->text.empty());
    CHECK(rcpt.address == "untouched");
  }
}

TEST_CASE("parse_bdat: BDAT <size> [LAST] (RFC 3030)") {
  struct Row {
    std::string_view args;
    bool ok;
    std::uint64_t size;
    bool last;
  };
  // clang-format off
  const Row rows[] = {
    {"0", true, 0, false},
    {"0 LAST", true, 0, true},
    {"100", true, 100, false},
    {"100 LAST", true, 100, true},
    {"100 last", true, 100, true},
    {"9999999999999999999", true, 9999999999999999999ull, false},   // 19 digits
    {"", false, 0, false},
    {"LAST", false, 0, false},
    {" 100", false, 0, false},
    {"100 ", false, 0, false},
    {"100  LAST", false, 0, false},
    {"100 LAST ", false, 0, false},
    {"100 LAST extra", false, 0, false},
    {"100 FIRST", false, 0, false},
    {"-1", false, 0, false},
    {"+1", false, 0, false},
    {"1e3", false, 0, false},
    {"0x10", false, 0, false},
    {"99999999999999999999", false, 0, false},   // 20 digits, past 2^64
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.args);
    auto b = parse_bdat(row.args);
    CHECK(b.has_value() == row.ok);
    if (b && row.ok) {
      CHECK(b->size == row.size);
      CHECK(b->last == row.last);
    }
  }
}

TEST_CASE("valid_xtext: RFC 3461 §4") {
  struct Row {
    std::string_view text;
    bool valid;
  };
  // clang-format off
  const Row rows[] = {
    {"a", true},
    {"user@example.test", true},
    {"!\"#$%&'()*,-./:;<>?[\\]^_`{|}~", true},   // every xchar special
    {"+2B", true},
    {"+3D", true},
    {"a+20b", true},
    {"+00+FF", true},
    {"+2", false},
    {"+", false},
    {"a+", false},
    {"+2b", false},          // hexchar is upper case only
    {"+G0", false},
    {"+ 2B", false},
    {"a=b", false},          // "=" must be encoded
    {"a b", false},          // SP is not an xchar
    {"a\tb", false},
    {"\x7F", false},
    {"\xC3\xBC", false},     // not ASCII
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.text);
    CHECK(valid_xtext(row.text) == row.valid);
  }
}

}  // namespace
}  // namespace moat::gateway
