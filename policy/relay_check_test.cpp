// Golden table for the relay check: which recipients Moat takes from which clients. Every path
// goes through policy::parse_path, as in the gateway, so the table covers the parser and the
// check together. Relay refusals are 554 5.7.1 (RFC 5321 §3.6.2 / RFC 3463 "delivery not
// authorized"); address syntax errors never reach the check.
#include "policy/relay_check.hpp"

#include <doctest/doctest.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <exception>
#include <string>
#include <string_view>

#include "policy/address.hpp"
#include "policy/config.hpp"

namespace moat::policy {
namespace {

const std::string_view kOutside = "203.0.113.5";  // not trusted
const std::string_view kTrustedV4 = "10.1.2.3";    // in 10.0.0.0/8
const std::string_view kTrustedV6 = "2001:db8:1::5";
const std::string_view kTrustedMapped = "::ffff:10.9.9.9";  // dual-stack view of a 10/8 client

RelayConfig test_relay_config() {
  RelayConfig c;
  c.domains = {"example.test", ".corp.example", "[192.0.2.1]"};
  c.trusted_networks = {*Cidr::parse("10.0.0.0/8"), *Cidr::parse("2001:db8:1::/48")};
  return c;
}

SessionInfo session_from(std::string_view ip) {
  SessionInfo s;
  s.sid = "test";
  auto parsed = IpAddress::parse(ip);
  REQUIRE(parsed.has_value());
  s.client_ip = *parsed;
  return s;
}

// Allow: relaying is allowed and the check has no opinion (Continue), so the RCPT stage goes on
// to the other checks. Accept: the recipient is taken outright (<Postmaster>). Deny: 554 5.7.1.
enum class Want { Allow, Accept, Deny };

struct Row {
  std::string_view rcpt;
  std::string_view client;
  Want want;
  bool smtputf8 = false;
};

void check_rows(const RelayCheck& relay, const Row* begin, const Row* end) {
  for (const Row* row = begin; row != end; ++row) {
    CAPTURE(row->rcpt);
    CAPTURE(row->client);
    auto parsed = parse_path(row->rcpt, row->smtputf8);
    CAPTURE(parsed.reason);
    REQUIRE(parsed.ok());
    Verdict v = relay.decide(session_from(row->client), parsed.path);
    CAPTURE(to_string(v.action));
    CAPTURE(v.reply.text);
    if (row->want == Want::Allow) {
      CHECK(v.action == Action::Continue);
      CHECK_FALSE(v.final());
    } else if (row->want == Want::Accept) {
      CHECK(v.action == Action::Accept);
    } else {
      CHECK(v.action == Action::Reject);
      CHECK(v.reply.code == 554);
      CHECK(v.reply.enhanced == "5.7.1");
      CHECK_FALSE(v.reply.text.empty());
    }
  }
}

TEST_CASE("relay check: our domains are allowed, in any case, with a trailing dot") {
  RelayCheck relay(test_relay_config());
  // clang-format off
  const Row rows[] = {
    {"<user@example.test>", kOutside, Want::Allow},
    {"<user@EXAMPLE.TEST>", kOutside, Want::Allow},
    {"<user@Example.Test.>", kOutside, Want::Allow},
    {"<User.Name+tag@example.test>", kOutside, Want::Allow},
    {"<\"john doe\"@example.test>", kOutside, Want::Allow},   // quoted, but nothing that routes
    {"<j\xC3\xBCrgen@example.test>", kOutside, Want::Allow, true},
    // ".corp.example" covers corp.example and every subdomain of it.
    {"<user@corp.example>", kOutside, Want::Allow},
    {"<user@mail.corp.example>", kOutside, Want::Allow},
    {"<user@a.b.corp.example>", kOutside, Want::Allow},
    {"<user@MAIL.Corp.Example.>", kOutside, Want::Allow},
    // A listed address literal.
    {"<user@[192.0.2.1]>", kOutside, Want::Allow},
    // RFC 5321 §4.5.1: postmaster is always accepted, with or without our domain.
    {"<Postmaster>", kOutside, Want::Accept},
    {"<postmaster>", kOutside, Want::Accept},
    {"<postmaster@example.test>", kOutside, Want::Allow},
  };
  // clang-format on
  check_rows(relay, std::begin(rows), std::end(rows));
}

TEST_CASE("relay check: foreign domains are refused to outsiders with 554 5.7.1") {
  RelayCheck relay(test_relay_config());
  // clang-format off
  const Row rows[] = {
    {"<user@ext.test>", kOutside, Want::Deny},
    {"<user@EXT.TEST.>", kOutside, Want::Deny},
    {"<postmaster@ext.test>", kOutside, Want::Deny},
    // Near misses of our names: only whole labels match.
    {"<user@notexample.test>", kOutside, Want::Deny},
    {"<user@example.testx>", kOutside, Want::Deny},
    {"<user@example.test.ext.test>", kOutside, Want::Deny},
    {"<user@sub.example.test>", kOutside, Want::Deny},      // "example.test" is exact, not a suffix
    {"<user@xcorp.example>", kOutside, Want::Deny},
    {"<user@corp.example.ext.test>", kOutside, Want::Deny},
    {"<j\xC3\xBCrgen@ext.test>", kOutside, Want::Deny, true},
    // Neighbours of the trusted networks.
    {"<user@ext.test>", "11.0.0.1", Want::Deny},
    {"<user@ext.test>", "2001:db8:2::5", Want::Deny},
    {"<user@ext.test>", "::10.1.2.3", Want::Deny},          // IPv4-compatible is not IPv4
  };
  // clang-format on
  check_rows(relay, std::begin(rows), std::end(rows));
}

TEST_CASE("relay check: trusted clients may relay anywhere") {
  RelayCheck relay(test_relay_config());
  // clang-format off
  const Row rows[] = {
    {"<user@ext.test>", kTrustedV4, Want::Allow},
    {"<user@ext.test>", kTrustedV6, Want::Allow},
    {"<user@ext.test>", kTrustedMapped, Want::Allow},
    {"<user@example.test>", kTrustedV4, Want::Allow},
    {"<Postmaster>", kTrustedV4, Want::Accept},
  };
  // clang-format on
  check_rows(relay, std::begin(rows), std::end(rows));
}

TEST_CASE("relay check: every relay trick is refused, for trusted clients too") {
  RelayCheck relay(test_relay_config());
  for (std::string_view client : {kOutside, kTrustedV4, kTrustedV6, kTrustedMapped}) {
    // clang-format off
    const Row rows[] = {
      // Percent hack: user%ext@ours is relayed to user@ext by a downstream MTA.
      {"<user%ext.test@example.test>", client, Want::Deny},
      {"<user%ext.test%other.test@example.test>", client, Want::Deny},
      {"<user%ext.test@mail.corp.example>", client, Want::Deny},
      {"<%@example.test>", client, Want::Deny},
      // Bang path: ext!user@ours.
      {"<ext.test!user@example.test>", client, Want::Deny},
      {"<a!b!user@example.test>", client, Want::Deny},
      // Quoted local parts holding a routing character.
      {"<\"user@ext.test\"@example.test>", client, Want::Deny},
      {"<\"user%ext.test\"@example.test>", client, Want::Deny},
      {"<\"ext.test!user\"@example.test>", client, Want::Deny},
      {"<\"user\\@ext.test\"@example.test>", client, Want::Deny},   // quoted pair
      {"<\"user\\%ext.test\"@EXAMPLE.TEST.>", client, Want::Deny},
      {"<\"@\"@example.test>", client, Want::Deny},
      // Source routes, whichever way they point (RFC 5321 appendix C).
      {"<@example.test:user@ext.test>", client, Want::Deny},
      {"<@example.test:user@example.test>", client, Want::Deny},
      {"<@ext.test,@example.test:user@example.test>", client, Want::Deny},
      {"<@mail.corp.example:user@ext.test>", client, Want::Deny},
      // Address literals that are not listed.
      {"<user@[192.0.2.2]>", client, Want::Deny},
      {"<user@[10.1.2.3]>", client, Want::Deny},
      {"<user@[127.0.0.1]>", client, Want::Deny},
      {"<user@[IPv6:2001:db8::1]>", client, Want::Deny},
      {"<user@[IPv6:::ffff:192.0.2.1]>", client, Want::Deny},
      {"<user@[x-tag:anything]>", client, Want::Deny},
    };
    // clang-format on
    check_rows(relay, std::begin(rows), std::end(rows));
  }
}

TEST_CASE("relay check: user@ext@local never reaches the check (501 5.1.3 from the parser)") {
  for (std::string_view rcpt : {"<user@ext.test@example.test>", "<@example.test:user@ext@x>"}) {
    CAPTURE(rcpt);
    auto parsed = parse_path(rcpt, false);
    CHECK_FALSE(parsed.ok());
    CHECK(parsed.error == PathError::Syntax);
  }
}

TEST_CASE("relay check: the null path is not a recipient") {
  RelayCheck relay(test_relay_config());
  auto parsed = parse_path("<>", false);
  REQUIRE(parsed.ok());
  for (std::string_view client : {kOutside, kTrustedV4}) {
    CAPTURE(client);
    Verdict v = relay.decide(session_from(client), parsed.path);
    CHECK(v.action == Action::Reject);
    CHECK(v.reply.code == 554);
    CHECK(v.reply.enhanced == "5.7.1");
  }
}

TEST_CASE("relay check: is_local_domain") {
  RelayCheck relay(test_relay_config());
  struct DomainRow {
    std::string_view domain;
    bool local;
  };
  // clang-format off
  const DomainRow rows[] = {
    {"example.test", true},
    {"EXAMPLE.TEST", true},
    {"example.test.", true},
    {"mail.corp.example", true},
    {"x.y.corp.example.", true},
    {"corp.example", true},
    {"CORP.EXAMPLE.", true},
    {"[192.0.2.1]", true},
    {"", false},
    {".", false},
    {"test", false},
    {"ext.test", false},
    {"sub.example.test", false},
    {"xexample.test", false},
    {"xcorp.example", false},
    {"[192.0.2.2]", false},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.domain);
    CHECK(relay.is_local_domain(row.domain) == row.local);
  }
}

TEST_CASE("relay check: configured through load_config_text, mixed-case entries still match") {
  auto cfg = load_config_text(
      "[relay]\n"
      "domains = [\"Example.TEST.\", \".Corp.Example\", \"[192.0.2.1]\"]\n"
      "trusted_networks = [\"10.0.0.0/8\"]\n",
      "relay.toml");
  REQUIRE_MESSAGE(cfg.ok(), (cfg.ok() ? "" : cfg.error().message));
  RelayCheck relay(cfg->relay);
  // clang-format off
  const Row rows[] = {
    {"<user@example.test>", kOutside, Want::Allow},
    {"<user@EXAMPLE.test.>", kOutside, Want::Allow},
    {"<user@mail.corp.example>", kOutside, Want::Allow},
    {"<user@[192.0.2.1]>", kOutside, Want::Allow},
    {"<user@ext.test>", kOutside, Want::Deny},
    {"<user@ext.test>", kTrustedV4, Want::Allow},
    {"<user%ext.test@example.test>", kTrustedV4, Want::Deny},
  };
  // clang-format on
  check_rows(relay, std::begin(rows), std::end(rows));
}

TEST_CASE("relay check: runs only at RCPT, and run() without a recipient never accepts") {
  RelayCheck relay(test_relay_config());
  CHECK(relay.name() == "relay");
  CHECK(relay.runs_at(Stage::RcptTo));
  for (Stage s : {Stage::Connect, Stage::Helo, Stage::MailFrom, Stage::EndOfData}) {
    CAPTURE(to_string(s));
    CHECK_FALSE(relay.runs_at(s));
  }

  // run() decides for ctx.current_rcpt exactly as decide() does.
  struct RunRow {
    std::string_view rcpt;
    Action action;
  };
  const RunRow rows[] = {{"<user@example.test>", Action::Continue},
                         {"<Postmaster>", Action::Accept},
                         {"<user@ext.test>", Action::Reject},
                         {"", Action::TempFail}};  // no current recipient: fail safe
  for (const auto& row : rows) {
    CAPTURE(row.rcpt);
    MessageContext ctx;
    ctx.session = session_from(kOutside);
    Recipient rcpt;
    if (!row.rcpt.empty()) {
      auto parsed = parse_path(row.rcpt, false);
      REQUIRE(parsed.ok());
      rcpt.path = parsed.path;
      rcpt.address = parsed.path.address();
      ctx.current_rcpt = &rcpt;
    }
    asio::io_context io;
    bool done = false;
    Verdict got;
    asio::co_spawn(io, relay.run(Stage::RcptTo, ctx), [&](std::exception_ptr e, Verdict v) {
      CHECK_FALSE(e);
      got = v;
      done = true;
    });
    io.run();
    REQUIRE(done);
    CHECK(got.action == row.action);
    if (row.action == Action::TempFail) CHECK(got.reply.code / 100 == 4);
  }
}

}  // namespace
}  // namespace moat::policy
