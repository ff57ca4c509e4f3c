#include "scanners/content_check.hpp"

#include <doctest/doctest.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <optional>

namespace moat::scanners {
namespace {

std::shared_ptr<const CompiledRules> compile(const std::string& text) {
  RuleSet set;
  std::vector<std::string> errors;
  parse_rule_text(text, "c.toml", RuleVariables::from_domains({"example.test"}), set, errors);
  check_rule_set(set, errors);
  REQUIRE(errors.empty());
  auto c = CompiledRules::build(std::move(set), {});
  REQUIRE(c);
  return *c;
}

policy::Verdict run_check(ContentCheck& check, policy::MessageContext& ctx) {
  asio::io_context io;
  std::optional<policy::Verdict> out;
  asio::co_spawn(io, check.run(policy::Stage::EndOfData, ctx), [&](std::exception_ptr e, policy::Verdict v) {
    CHECK(!e);
    out = std::move(v);
  });
  io.run();
  REQUIRE(out);
  return *out;
}

const char* kRules = R"RULES(
[[rule]]
id = "lure"
target = "subject"
pattern = 'password'
flags = ["caseless"]
score = 4
description = "credential lure in the subject"

[[rule]]
id = "bad_word"
target = "body"
literal = "wire the money"
action = "reject"
reply = "Refused: payment fraud pattern"
description = "payment fraud"

[[rule]]
id = "hold"
target = "body"
literal = "quarantine me"
action = "quarantine"
description = "to quarantine"

[[rule]]
id = "mark"
target = "body"
literal = "tag me"
action = "tag"
tag = "suspicious"
description = "tagged"

[[rule]]
id = "watch"
target = "body"
literal = "shadow"
action = "reject"
shadow = true
description = "trial rule"
)RULES";

policy::MessageContext message(const std::string& subject, const std::string& body) {
  policy::MessageContext ctx;
  ctx.session.sid = "S1";
  ctx.message = "From: a@example.test\r\nTo: b@example.test\r\nSubject: " + subject + "\r\n\r\n" + body + "\r\n";
  return ctx;
}

}  // namespace

TEST_CASE("content check: findings, direct actions and shadow rules") {
  RuleStore store;
  store.swap(compile(kRules));
  ContentCheck check(store, {});
  CHECK(check.runs_at(policy::Stage::EndOfData));
  CHECK_FALSE(check.runs_at(policy::Stage::RcptTo));
  struct Row {
    const char* subject;
    const char* body;
    policy::Action action;
    std::vector<std::string> findings;
    std::string reply;
    bool tagged;
  };
  Row rows[] = {
      {"hello", "nothing to see", policy::Action::Continue, {}, "", false},
      {"Password reset", "hi", policy::Action::Continue, {"rule.lure"}, "", false},
      {"x", "please wire the money today", policy::Action::Reject, {"rule.bad_word"},
       "Refused: payment fraud pattern", false},
      {"x", "quarantine me please", policy::Action::Quarantine, {"rule.hold"}, "", false},
      {"x", "tag me", policy::Action::Continue, {"rule.mark"}, "", true},
      {"x", "a shadow rule only", policy::Action::Continue, {}, "", false},
      {"x", "quarantine me, wire the money, tag me", policy::Action::Reject,
       {"rule.bad_word", "rule.hold", "rule.mark"}, "Refused: payment fraud pattern", true},
  };
  for (const auto& row : rows) {
    CAPTURE(row.body);
    auto ctx = message(row.subject, row.body);
    auto v = run_check(check, ctx);
    CHECK(v.action == row.action);
    std::vector<std::string> names;
    for (const auto& f : ctx.findings) names.push_back(f.name);
    CHECK(names == row.findings);
    if (row.action == policy::Action::Reject) {
      CHECK(v.reply.code == 550);
      CHECK(v.reply.enhanced == "5.7.1");
      CHECK(v.reply.text == row.reply);
    }
    bool tagged = !ctx.add_headers.empty() && ctx.add_headers[0] ==
                                                  std::pair<std::string, std::string>{"X-Moat-Tag", "suspicious"};
    CHECK(tagged == row.tagged);
  }
  // Scores and details travel with the finding.
  auto ctx = message("Password", "x");
  run_check(check, ctx);
  REQUIRE(ctx.findings.size() == 1);
  CHECK(ctx.findings[0].score == 4);
  CHECK(ctx.findings[0].detail == "subject: Password");
  // The shadow rule was counted although it had no effect.
  auto snap = store.current();
  std::size_t watch = 4;
  REQUIRE(snap->rules().rules[watch].id == "watch");
  CHECK(snap->hit_count(watch) == 1);
}

TEST_CASE("content check: no rule set means no opinion; malformed MIME gives mime findings") {
  RuleStore store;
  ContentCheck check(store, {});
  auto ctx = message("x", "y");
  CHECK(run_check(check, ctx).action == policy::Action::Continue);
  CHECK(ctx.findings.empty());
  store.swap(compile(kRules));
  policy::MessageContext bad;
  bad.message = "From: a@example.test\r\nSubject: a\r\nSubject: b\r\nMIME-Version: 1.0\r\n"
                "Content-Type: multipart/mixed\r\n\r\nbody\r\n";
  CHECK(run_check(check, bad).action == policy::Action::Continue);
  std::vector<std::string> names;
  for (const auto& f : bad.findings) names.push_back(f.name);
  CHECK(std::find(names.begin(), names.end(), "mime.duplicate_header") != names.end());
  CHECK(std::find(names.begin(), names.end(), "mime.bad_boundary") != names.end());
  for (const auto& f : bad.findings) CHECK(f.score == 0);
}

TEST_CASE("content check: the default reply text when a reject rule has none") {
  RuleStore store;
  store.swap(compile("[[rule]]\nid = \"r\"\ntarget = \"body\"\nliteral = \"bad\"\naction = \"reject\"\n"
                     "description = \"d\"\n"));
  ContentCheck check(store, {});
  auto ctx = message("x", "bad");
  auto v = run_check(check, ctx);
  CHECK(v.action == policy::Action::Reject);
  CHECK(v.reply.text == kDefaultRejectText);
}

}  // namespace moat::scanners
