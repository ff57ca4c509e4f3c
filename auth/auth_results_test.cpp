// Tests for auth/auth_results.hpp: the RFC 8601 header text, escaping of client-provided
// strings (no header injection through CR/LF in any value), forged-header detection.
#include "auth/auth_results.hpp"

#include <doctest/doctest.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <string>
#include <vector>

namespace moat::auth {
namespace {

TEST_CASE("auth results: header text") {
  policy::AuthResults all;
  all.spf_result = "pass";
  all.spf_domain = "example.com";
  all.dkim_checked = true;
  all.dkim = {{"pass", "example.com", "sel", "AbC+1234", "", false},
              {"fail", "other.example", "s2", "zz/9", "body hash mismatch", false},
              {"pass", "t.example", "s3", "", "", true}};
  all.dmarc_result = "fail";
  all.dmarc_domain = "example.com";
  all.dmarc_policy = "reject";
  policy::AuthResults dkim_none;
  dkim_none.dkim_checked = true;
  policy::AuthResults null_sender;
  null_sender.spf_result = "softfail";
  struct Row {
    std::string name;
    policy::AuthResults auth;
    AuthIdentities ids;
    std::string expected;
  };
  const Row rows[] = {
      {"nothing checked", {}, {"a@example.com", "h"}, "mx.moat.test; none"},
      {"everything", all, {"bounce@example.com", "mail.example.com"},
       "mx.moat.test;\r\n"
       "\tspf=pass smtp.mailfrom=bounce@example.com;\r\n"
       "\tdkim=pass header.d=example.com header.s=sel header.b=AbC+1234;\r\n"
       "\tdkim=fail (body hash mismatch) header.d=other.example header.s=s2 header.b=\"zz/9\";\r\n"
       "\tdkim=pass (test mode) header.d=t.example header.s=s3;\r\n"
       "\tdmarc=fail (p=reject) header.from=example.com"},
      {"unsigned", dkim_none, {"", ""}, "mx.moat.test;\r\n\tdkim=none"},
      {"null sender uses HELO", null_sender, {"", "mail.example.com"},
       "mx.moat.test;\r\n\tspf=softfail smtp.helo=mail.example.com"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.name);
    CHECK(build_authentication_results("mx.moat.test", row.auth, row.ids) == row.expected);
  }
}

TEST_CASE("auth results: escaping, and no header injection through any value") {
  CHECK(ar_value("pass") == "pass");
  CHECK(ar_value("") == "\"\"");
  CHECK(ar_value("a b") == "\"a b\"");
  CHECK(ar_value("x\"y\\z") == "\"x\\\"y\\\\z\"");
  CHECK(ar_value("a;b") == "\"a;b\"");
  CHECK(ar_value("a\r\nX-Evil: 1") == "\"a??X-Evil: 1\"");
  CHECK(ar_value("caf\xC3\xA9") == "\"caf??\"");
  CHECK(ar_comment("a (b) \\ c") == "(a \\(b\\) \\\\ c)");
  CHECK(ar_comment("x)\r\nX-Evil: 1") == "(x\\)??X-Evil: 1)");

  const std::string evil = "a\r\nX-Injected: yes\r\n\r\nbody";
  policy::AuthResults auth;
  auth.spf_result = "pass";
  auth.dkim_checked = true;
  auth.dkim = {{"fail", evil, evil, evil, evil, false}};
  auth.dmarc_result = "fail";
  auth.dmarc_domain = evil;
  auth.dmarc_policy = evil;
  for (const AuthIdentities& ids :
       {AuthIdentities{"\"x\r\ny\"@example.com", evil}, AuthIdentities{"", evil},
        AuthIdentities{"a@" + evil, ""}}) {
    std::string v = build_authentication_results("mx.moat.test", auth, ids);
    CAPTURE(v);
    // Every line break is one of Moat's own folds: CRLF followed by a tab.
    for (std::size_t i = v.find('\n'); i != std::string::npos; i = v.find('\n', i + 1)) {
      REQUIRE(i > 0);
      CHECK(v[i - 1] == '\r');
      REQUIRE(i + 1 < v.size());
      CHECK(v[i + 1] == '\t');
    }
    std::size_t crs = 0;
    for (char c : v) crs += c == '\r';
    CHECK(crs == 3);  // one fold before each of spf, dkim, dmarc; none from the values
    CHECK(v.find("\nX-Injected") == std::string::npos);
    // The quoted local part is not written; its domain is.
    if (!ids.mail_from.empty() && ids.mail_from[0] == '"')
      CHECK(v.find("smtp.mailfrom=example.com;") != std::string::npos);
  }
}

TEST_CASE("auth results: authserv-id parsing and forged fields") {
  struct Row {
    std::string value, id;
  };
  const Row rows[] = {
      {" mx.moat.test; spf=pass", "mx.moat.test"},
      {"mx.moat.test;spf=pass", "mx.moat.test"},
      {" (comment) mx.moat.test 1; none", "mx.moat.test"},
      {" (nested (comment)) \"mx.moat.test\"; none", "mx.moat.test"},
      {"\r\n\tMX.Moat.Test;\r\n\tdkim=pass", "MX.Moat.Test"},
      {" ", ""},
      {"", ""},
  };
  for (const auto& row : rows) {
    CAPTURE(row.value);
    CHECK(authserv_id_of(row.value) == row.id);
  }
  const std::string m =
      "Authentication-Results: MX.MOAT.TEST; dmarc=pass header.from=bank.example\r\n"
      "Authentication-Results: upstream.example; spf=pass\r\n"
      "Authentication-Results: (hi) mx.moat.test;\r\n\tdkim=pass\r\n"
      "Authentication-Results: mx.moat.test.evil; spf=pass\r\n"
      "From: a@bank.example\r\n\r\nAuthentication-Results: mx.moat.test; body\r\n";
  auto forged = forged_authentication_results(m, "mx.moat.test");
  std::vector<policy::HeaderRemoval> expected{{"Authentication-Results", 0},
                                              {"Authentication-Results", 2}};
  CHECK(forged == expected);
  std::string cleaned = policy::remove_header_fields(m, forged);
  CHECK(cleaned.find("MX.MOAT.TEST") == std::string::npos);
  CHECK(cleaned.find("(hi)") == std::string::npos);
  CHECK(cleaned.find("upstream.example") != std::string::npos);
  CHECK(cleaned.find("mx.moat.test.evil") != std::string::npos);
  CHECK(cleaned.find("mx.moat.test; body") != std::string::npos);
}

TEST_CASE("AuthResultsCheck: adds the header and marks forgeries") {
  AuthResultsCheck check("mx.moat.test");
  policy::MessageContext ctx;
  ctx.message = "Authentication-Results: mx.moat.test; dkim=pass\r\nFrom: a@b.example\r\n\r\nx\r\n";
  ctx.auth.dmarc_result = "none";
  ctx.auth.dmarc_domain = "b.example";
  asio::io_context io;
  policy::Verdict v;
  asio::co_spawn(io, check.run(policy::Stage::EndOfData, ctx),
                 [&](std::exception_ptr e, policy::Verdict r) {
                   REQUIRE(!e);
                   v = r;
                 });
  io.run();
  CHECK(v.action == policy::Action::Continue);
  REQUIRE(ctx.add_headers.size() == 1);
  CHECK(ctx.add_headers[0].first == "Authentication-Results");
  CHECK(ctx.add_headers[0].second == "mx.moat.test;\r\n\tdmarc=none header.from=b.example");
  REQUIRE(ctx.remove_headers.size() == 1);
  CHECK(ctx.remove_headers[0] == policy::HeaderRemoval{"Authentication-Results", 0});
}

}  // namespace
}  // namespace moat::auth
