// Tests for auth/dmarc.hpp: record parsing, the organisational domain from Debian's Public
// Suffix List, alignment, p/sp/pct, record discovery (StaticResolver) and From: handling.
#include "auth/dmarc.hpp"

#include <doctest/doctest.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <exception>
#include <optional>
#include <string>
#include <vector>

namespace moat::auth {
namespace {

template <class T>
T run_sync(asio::awaitable<T> a) {
  asio::io_context io;
  std::optional<T> out;
  std::exception_ptr error;
  asio::co_spawn(io, std::move(a), [&](std::exception_ptr e, T v) {
    error = e;
    if (!e) out = std::move(v);
  });
  io.run();
  if (error) std::rethrow_exception(error);
  return std::move(*out);
}

const PublicSuffixList& psl() {
  static PublicSuffixList p;
  return p;
}

DnsResult txt(std::vector<std::string> records) {
  DnsResult r;
  r.status = DnsStatus::Ok;
  r.records = std::move(records);
  return r;
}

TEST_CASE("dmarc: record parsing") {
  struct Row {
    std::string txt;
    bool ok;
    std::string p, sp;
    int pct;
    bool adkim_strict, aspf_strict;
    std::string error_has;
  };
  const Row rows[] = {
      {"v=DMARC1; p=reject", true, "reject", "", 100, false, false, ""},
      {"v=DMARC1;p=quarantine;sp=none;pct=25;adkim=s;aspf=r", true, "quarantine", "none", 25,
       true, false, ""},
      {"v=DMARC1 ; p = None ; aspf=s ;", true, "none", "", 100, false, true, ""},
      {"v=DMARC1; p=reject; rua=mailto:d@example.test; fo=1; future=x", true, "reject", "", 100,
       false, false, ""},
      {"v=DMARC1; p=bogus; rua=mailto:d@example.test", true, "none", "", 100, false, false, ""},
      {"v=DMARC1; rua=mailto:d@example.test", true, "none", "", 100, false, false, ""},
      {"v=DMARC1; p=bogus", false, "", "", 0, false, false, "p="},
      {"v=DMARC1; sp=reject", false, "", "", 0, false, false, "p="},
      {"v=DMARC1; p=reject; sp=maybe", false, "", "", 0, false, false, "sp="},
      {"v=DMARC1; p=reject; pct=101", false, "", "", 0, false, false, "pct"},
      {"v=DMARC1; p=reject; pct=-1", false, "", "", 0, false, false, "pct"},
      {"v=DMARC1; p=reject; pct=5x", false, "", "", 0, false, false, "pct"},
      {"v=DMARC1; p=reject; adkim=x", false, "", "", 0, false, false, "adkim"},
      {"v=DMARC1; p=reject; junk", false, "", "", 0, false, false, "junk"},
      {"p=reject; v=DMARC1", false, "", "", 0, false, false, "not DMARC"},
      {"v=spf1 -all", false, "", "", 0, false, false, "not DMARC"},
      {"v=dmarc1; p=reject", false, "", "", 0, false, false, "not DMARC"},
      {"", false, "", "", 0, false, false, "not DMARC"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.txt);
    auto r = parse_dmarc_record(row.txt);
    REQUIRE(r.ok() == row.ok);
    if (!row.ok) {
      CHECK(r.error().message.find(row.error_has) != std::string::npos);
      continue;
    }
    CHECK(r->p == row.p);
    CHECK(r->sp == row.sp);
    CHECK(r->pct == row.pct);
    CHECK(r->adkim_strict == row.adkim_strict);
    CHECK(r->aspf_strict == row.aspf_strict);
  }
}

TEST_CASE("dmarc: organisational domain and alignment from the Public Suffix List") {
  struct Org {
    std::string domain, org;
  };
  const Org orgs[] = {
      {"example.com", "example.com"},
      {"mail.example.com", "example.com"},
      {"a.b.example.co.uk", "example.co.uk"},
      {"example.co.uk", "example.co.uk"},
      {"co.uk", "co.uk"},  // a public suffix is its own organisational domain
      {"com", "com"},
      {"mail.example.test", "example.test"},  // not in the list: the "*" rule
  };
  for (const auto& o : orgs) {
    CAPTURE(o.domain);
    CHECK(psl().organizational_domain(o.domain) == o.org);
  }
  struct Align {
    std::string a, b;
    bool strict, aligned;
  };
  const Align rows[] = {
      {"example.com", "example.com", true, true},
      {"mail.example.com", "example.com", false, true},
      {"mail.example.com", "example.com", true, false},
      {"a.example.com", "b.example.com", false, true},
      {"example.co.uk", "other.co.uk", false, false},
      {"example.com", "example.net", false, false},
      {"EXAMPLE.com", "example.COM", true, true},
      {"", "example.com", false, false},
  };
  for (const auto& r : rows) {
    CAPTURE(r.a);
    CAPTURE(r.b);
    CAPTURE(r.strict);
    CHECK(dmarc_aligned(r.a, r.b, r.strict, psl()) == r.aligned);
  }
}

TEST_CASE("dmarc: evaluation table (alignment, sp, pct)") {
  policy::DkimOutcome dkim_pass{"pass", "example.com", "s", "", "", false};
  policy::DkimOutcome dkim_sub_pass{"pass", "mail.example.com", "s", "", "", false};
  policy::DkimOutcome dkim_other_pass{"pass", "evil.example", "s", "", "", false};
  policy::DkimOutcome dkim_fail{"fail", "example.com", "s", "", "bad", false};
  policy::DkimOutcome dkim_testing{"pass", "example.com", "s", "", "", true};
  struct Row {
    std::string name;
    std::string from, spf_result, spf_domain;
    std::vector<policy::DkimOutcome> dkim;
    std::string record, record_domain;
    unsigned roll;
    std::string result, policy;
  };
  const Row rows[] = {
      {"aligned DKIM", "example.com", "", "", {dkim_pass}, "v=DMARC1; p=reject", "example.com", 0,
       "pass", "none"},
      {"aligned SPF", "example.com", "pass", "example.com", {}, "v=DMARC1; p=reject",
       "example.com", 0, "pass", "none"},
      {"relaxed SPF subdomain", "example.com", "pass", "bounce.example.com", {},
       "v=DMARC1; p=reject", "example.com", 0, "pass", "none"},
      {"strict SPF subdomain", "example.com", "pass", "bounce.example.com", {},
       "v=DMARC1; p=reject; aspf=s", "example.com", 0, "fail", "reject"},
      {"relaxed DKIM subdomain", "example.com", "", "", {dkim_sub_pass}, "v=DMARC1; p=reject",
       "example.com", 0, "pass", "none"},
      {"strict DKIM subdomain", "example.com", "", "", {dkim_sub_pass},
       "v=DMARC1; p=reject; adkim=s", "example.com", 0, "fail", "reject"},
      {"unaligned DKIM pass", "example.com", "", "", {dkim_other_pass}, "v=DMARC1; p=reject",
       "example.com", 0, "fail", "reject"},
      {"aligned but failing DKIM", "example.com", "", "", {dkim_fail}, "v=DMARC1; p=quarantine",
       "example.com", 0, "fail", "quarantine"},
      {"testing key does not count", "example.com", "", "", {dkim_testing},
       "v=DMARC1; p=reject", "example.com", 0, "fail", "reject"},
      {"SPF softfail does not count", "example.com", "softfail", "example.com", {},
       "v=DMARC1; p=reject", "example.com", 0, "fail", "reject"},
      {"unaligned SPF pass", "example.com", "pass", "example.net", {}, "v=DMARC1; p=reject",
       "example.com", 0, "fail", "reject"},
      {"one of several signatures aligned", "example.com", "", "",
       {dkim_other_pass, dkim_fail, dkim_sub_pass}, "v=DMARC1; p=reject", "example.com", 0,
       "pass", "none"},
      {"sp= for a subdomain found at the org", "news.example.com", "", "", {},
       "v=DMARC1; p=reject; sp=quarantine", "example.com", 0, "fail", "quarantine"},
      {"no sp=: p= for the subdomain", "news.example.com", "", "", {}, "v=DMARC1; p=reject",
       "example.com", 0, "fail", "reject"},
      {"sp= ignored when the record is the From domain's own", "example.com", "", "", {},
       "v=DMARC1; p=reject; sp=none", "example.com", 0, "fail", "reject"},
      {"pct sampled in", "example.com", "", "", {}, "v=DMARC1; p=reject; pct=50", "example.com",
       49, "fail", "reject"},
      {"pct sampled out: reject -> quarantine", "example.com", "", "", {},
       "v=DMARC1; p=reject; pct=50", "example.com", 50, "fail", "quarantine"},
      {"pct sampled out: quarantine -> none", "example.com", "", "", {},
       "v=DMARC1; p=quarantine; pct=0", "example.com", 0, "fail", "none"},
      {"pct=100 always applies", "example.com", "", "", {}, "v=DMARC1; p=reject; pct=100",
       "example.com", 99, "fail", "reject"},
      {"p=none", "example.com", "", "", {}, "v=DMARC1; p=none", "example.com", 0, "fail", "none"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.name);
    auto rec = parse_dmarc_record(row.record);
    REQUIRE(rec.ok());
    DmarcInput in{row.from, row.spf_result, row.spf_domain, row.dkim};
    auto out = evaluate_dmarc(in, *rec, row.record_domain, row.roll, psl());
    CHECK(out.result == row.result);
    CHECK(out.policy == row.policy);
    CHECK(out.domain == row.from);
  }
}

TEST_CASE("dmarc: record discovery through DNS") {
  DnsResult servfail;
  servfail.status = DnsStatus::TempFail;
  servfail.error = "SERVFAIL";
  struct Row {
    std::string name;
    std::string from;
    std::vector<std::pair<std::string, DnsResult>> zone;
    std::string result, policy, record_domain, reason_has;
  };
  const Row rows[] = {
      {"record at the From domain", "example.com",
       {{"_dmarc.example.com", txt({"v=DMARC1; p=reject"})}}, "fail", "reject", "example.com",
       ""},
      {"fallback to the organisational domain", "a.b.example.com",
       {{"_dmarc.example.com", txt({"v=DMARC1; p=quarantine"})}}, "fail", "quarantine",
       "example.com", ""},
      {"the From domain's own record wins", "news.example.com",
       {{"_dmarc.news.example.com", txt({"v=DMARC1; p=none"})},
        {"_dmarc.example.com", txt({"v=DMARC1; p=reject"})}},
       "fail", "none", "news.example.com", ""},
      {"non-DMARC TXT records are ignored", "example.com",
       {{"_dmarc.example.com", txt({"v=spf1 -all", "v=DMARC1; p=reject", "hello"})}}, "fail",
       "reject", "example.com", ""},
      {"no record anywhere", "mail.example.com", {}, "none", "none", "", "no DMARC"},
      {"only non-DMARC text", "example.com", {{"_dmarc.example.com", txt({"v=spf1 -all"})}},
       "none", "none", "", "no DMARC"},
      {"several records", "example.com",
       {{"_dmarc.example.com", txt({"v=DMARC1; p=reject", "v=DMARC1; p=none"})}}, "permerror",
       "none", "example.com", "several"},
      {"invalid record", "example.com", {{"_dmarc.example.com", txt({"v=DMARC1; p=whatever"})}},
       "permerror", "none", "example.com", "p="},
      {"DNS failure at the From domain", "example.com", {{"_dmarc.example.com", servfail}},
       "temperror", "none", "", "SERVFAIL"},
      {"DNS failure at the organisational domain", "mail.example.com",
       {{"_dmarc.example.com", servfail}}, "temperror", "none", "", "_dmarc.example.com"},
      {"a public suffix From has no fallback", "co.uk", {}, "none", "none", "", ""},
  };
  for (const auto& row : rows) {
    CAPTURE(row.name);
    StaticResolver dns;
    for (const auto& [name, result] : row.zone) dns.add(name, RrType::TXT, result);
    DmarcEvaluator ev(dns, psl());
    DmarcInput in;
    in.from_domain = row.from;
    auto out = run_sync(ev.evaluate(in, 0));
    CAPTURE(out.reason);
    CHECK(out.result == row.result);
    CHECK(out.policy == row.policy);
    CHECK(out.record_domain == row.record_domain);
    CHECK(out.reason.find(row.reason_has) != std::string::npos);
  }
}

TEST_CASE("dmarc: From: domains, fail safe") {
  struct Row {
    std::string header;
    bool ok;
    std::vector<std::string> domains;
  };
  const Row rows[] = {
      {"From: alice@Example.COM\r\n", true, {"example.com"}},
      {"From: \"Alice\" <alice@example.com>\r\n", true, {"example.com"}},
      {"From: \"Bob <bob@evil.example>\" <alice@example.com>\r\n", true, {"example.com"}},
      {"From: Alice (alice@evil.example) <alice@example.com>\r\n", true, {"example.com"}},
      {"From: alice@example.com (Alice <x@evil.example>)\r\n", true, {"example.com"}},
      {"From: Alice\r\n <alice@example.com>\r\n", true, {"example.com"}},
      {"From: a@example.com, b@other.example\r\n", true, {"example.com", "other.example"}},
      {"From: a@example.com\r\nFrom: b@evil.example\r\n", true,
       {"example.com", "evil.example"}},
      {"From: a@example.com\r\nfrom: A <a@EXAMPLE.com>\r\n", true, {"example.com"}},
      {"From: Team: a@example.com, b@example.net;\r\n", true, {"example.com", "example.net"}},
      {"From: \"a,b\" <x@example.com>\r\n", true, {"example.com"}},
      {"From: alice@example.com.\r\n", true, {"example.com"}},
      {"To: x@example.com\r\n", false, {}},
      {"From: \r\n", false, {}},
      {"From: undisclosed:;\r\n", false, {}},
      {"From: alice\r\n", false, {}},
      {"From: alice@[192.0.2.1]\r\n", false, {}},
      {"From: alice@exa mple.com\r\n", false, {}},
      {"From: alice@-bad-.com\r\n", false, {}},
      {"From: <alice@example.com\r\n", false, {}},
      {"From: a@example.com, broken\r\n", false, {}},
  };
  for (const auto& row : rows) {
    CAPTURE(row.header);
    auto f = from_domains(row.header + "Subject: x\r\n\r\nbody\r\n");
    CAPTURE(f.problem);
    CHECK(f.ok == row.ok);
    if (row.ok) CHECK(f.domains == row.domains);
    else CHECK_FALSE(f.problem.empty());
  }
}

TEST_CASE("DmarcCheck: verdicts, findings and configurable actions") {
  StaticResolver dns;
  dns.add("_dmarc.reject.example", RrType::TXT, txt({"v=DMARC1; p=reject"}));
  dns.add("_dmarc.quarantine.example", RrType::TXT, txt({"v=DMARC1; p=quarantine"}));
  dns.add("_dmarc.none.example", RrType::TXT, txt({"v=DMARC1; p=none"}));
  DmarcEvaluator ev(dns, psl());
  auto msg = [](const std::string& from) {
    return "From: " + from + "\r\nSubject: x\r\n\r\nbody\r\n";
  };
  struct Row {
    std::string name;
    std::string message;
    policy::DmarcConfig config;
    std::string spf_result, spf_domain;
    policy::Action action;
    std::string finding;
    double score;
  };
  policy::DmarcConfig defaults;
  policy::DmarcConfig lenient;
  lenient.on_reject = policy::DmarcAction::Quarantine;
  lenient.on_quarantine = policy::DmarcAction::None;
  const Row rows[] = {
      {"p=reject fails", msg("a@reject.example"), defaults, "", "", policy::Action::Reject,
       "dmarc.fail", DmarcCheck::kFailScore},
      {"p=reject passes with aligned SPF", msg("a@reject.example"), defaults, "pass",
       "reject.example", policy::Action::Continue, "dmarc.pass", 0},
      {"p=quarantine fails", msg("a@quarantine.example"), defaults, "", "",
       policy::Action::Quarantine, "dmarc.fail", DmarcCheck::kFailScore},
      {"p=none fails: no action", msg("a@none.example"), defaults, "", "",
       policy::Action::Continue, "dmarc.fail", 1},
      {"no record", msg("a@unknown.example"), defaults, "", "", policy::Action::Continue,
       "dmarc.none", 0},
      {"override: reject becomes quarantine", msg("a@reject.example"), lenient, "", "",
       policy::Action::Quarantine, "dmarc.fail", DmarcCheck::kFailScore},
      {"override: quarantine becomes nothing", msg("a@quarantine.example"), lenient, "", "",
       policy::Action::Continue, "dmarc.fail", DmarcCheck::kFailScore},
      {"second From: cannot hide a failing one",
       "From: a@none.example\r\nFrom: b@reject.example\r\n\r\nx\r\n", defaults, "pass",
       "none.example", policy::Action::Reject, "dmarc.fail", DmarcCheck::kFailScore},
      {"no From: at all", "Subject: x\r\n\r\nbody\r\n", defaults, "", "",
       policy::Action::Continue, "dmarc.permerror", DmarcCheck::kBadFromScore},
      {"From: without a domain", msg("nobody"), defaults, "", "", policy::Action::Continue,
       "dmarc.permerror", DmarcCheck::kBadFromScore},
  };
  for (const auto& row : rows) {
    CAPTURE(row.name);
    DmarcCheck check(ev, row.config, [] { return 0u; });
    policy::MessageContext ctx;
    ctx.message = row.message;
    ctx.auth.spf_result = row.spf_result;
    ctx.auth.spf_domain = row.spf_domain;
    auto v = run_sync(check.run(policy::Stage::EndOfData, ctx));
    CHECK(v.action == row.action);
    REQUIRE(ctx.findings.size() == 1);
    CHECK(ctx.findings[0].name == row.finding);
    CHECK(ctx.findings[0].score == row.score);
    CHECK(ctx.auth.dmarc_result == row.finding.substr(6));
    if (v.action == policy::Action::Reject) {
      CHECK(v.reply.code == 550);
      CHECK(v.reply.enhanced == "5.7.1");
      CHECK(v.reply.text.find("DMARC") != std::string::npos);
      CHECK(v.reply.text.find("reject.example") != std::string::npos);
    }
  }
}

}  // namespace
}  // namespace moat::auth
