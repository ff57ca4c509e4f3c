#include "scanners/content_engine.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "scanners/test_samples.hpp"

namespace moat::scanners {
namespace {

RuleSet parse(const std::string& text) {
  RuleSet set;
  std::vector<std::string> errors;
  parse_rule_text(text, "e.toml", RuleVariables::from_domains({"example.test"}), set, errors);
  check_rule_set(set, errors);
  std::string all;
  for (const auto& e : errors) all += e + "\n";
  CAPTURE(all);
  REQUIRE(errors.empty());
  return set;
}

std::string rule(const std::string& id, const std::string& target, const std::string& pattern,
                 const std::string& extra = "") {
  return "[[rule]]\nid = \"" + id + "\"\ntarget = \"" + target + "\"\npattern = '" + pattern +
         "'\nscore = 1\ndescription = \"d\"\n" + extra + "\n";
}

const std::string kMessage = [] {
  std::string zip = testing::make_zip({{"notes.txt", "hi"}, {"payload.exe", testing::make_pe()}});
  return "From: \"IT Support example.test\" <evil@attacker.example>\r\n"
         "To: b@example.test\r\nSubject: =?UTF-8?B?UGFzc3dvcmQgZXhwaXJlZA==?=\r\n"
         "X-Mailer: BulkMailer 3\r\nMIME-Version: 1.0\r\n"
         "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
         "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
         "<p>Your <b>password</b> expires today. <a href=\"https://login.attacker.example/reset\">Keep it</a></p>\r\n"
         "--b\r\nContent-Type: application/octet-stream\r\n"
         "Content-Disposition: attachment; filename=\"stuff.zip\"\r\n"
         "Content-Transfer-Encoding: base64\r\n\r\n" +
         testing::base64(zip) + "\r\n--b--\r\n";
}();

}  // namespace

TEST_CASE("engine: hyperscan runs on this machine") { CHECK(check_hyperscan_platform().ok()); }

TEST_CASE("engine: each target class sees its own part of the message") {
  struct Row {
    std::string target;
    std::string pattern;
    bool fires;
    std::string where;  // expected RuleHit::where when it fires
  };
  Row rows[] = {
      {"subject", "^Password expired$", true, "subject"},
      {"subject", "UGFzc3dvcmQ", false, ""},  // the encoded form is not the subject
      {"from.name", "example\\.test", true, "from display name"},
      {"from.name", "attacker", false, ""},
      {"header:X-Mailer", "^BulkMailer", true, "header X-Mailer"},
      {"header:Subject", "^BulkMailer", false, ""},
      {"header", "^X-Mailer: Bulk", true, "header"},
      {"body", "password expires", true, "part 1"},  // HTML made visible text
      {"body", "<b>", false, ""},
      {"html", "<b>password</b>", true, "part 1"},
      {"raw", "UGFzc3dvcmQgZXhwaXJlZA==", true, "raw message"},
      {"url", "^https://login\\.", true, "url https://login.attacker.example/reset"},
      {"domain", "^login\\.attacker\\.example$", true, "url https://login.attacker.example/reset"},
      {"attachment.name", "\\.zip$", true, "part 2 (stuff.zip)"},
      {"attachment.name", "\\.exe$", true, "part 2 (stuff.zip) entry payload.exe"},
      {"attachment.type", "^application/vnd\\.microsoft\\.portable-executable$", true,
       "part 2 (stuff.zip) entry payload.exe"},
      {"attachment.type", "^application/zip$", true, "part 2 (stuff.zip)"},
      {"attachment.content", "payload\\.exe", true, "part 2 (stuff.zip)"},
      {"attachment.content", "password", false, ""},
  };
  auto msg = parse_mime(kMessage);
  for (const auto& row : rows) {
    CAPTURE(row.target);
    CAPTURE(row.pattern);
    auto compiled = CompiledRules::build(parse(rule("r", row.target, row.pattern, "flags = [\"caseless\"]")), {});
    REQUIRE(compiled);
    auto report = (*compiled)->scan(msg, kMessage);
    REQUIRE(report.hits.size() == (row.fires ? 1u : 0u));
    if (row.fires) {
      CHECK(report.hits[0].where == row.where);
      CHECK(report.hits[0].rule->id == "r");
      CHECK((*compiled)->hit_count(0) == 1);
    }
  }
}

TEST_CASE("engine: min_count, requires and unless") {
  std::string rules = rule("word", "body", "[a-z]", "min_count = 5") + rule("many", "body", "x", "min_count = 1000") +
                      rule("subj", "subject", "Password") + rule("never", "subject", "zzz") +
                      "[[rule]]\nid = \"both\"\nrequires = [\"word\", \"subj\"]\nunless = [\"never\"]\n"
                      "score = 3\ndescription = \"d\"\n"
                      "[[rule]]\nid = \"blocked\"\nrequires = [\"subj\"]\nunless = [\"word\"]\n"
                      "score = 3\ndescription = \"d\"\n" +
                      rule("pat_unless", "subject", "expired", "unless = [\"never\"]");
  auto compiled = CompiledRules::build(parse(rules), {});
  REQUIRE(compiled);
  auto msg = parse_mime(kMessage);
  auto report = (*compiled)->scan(msg, kMessage);
  std::vector<std::string> ids;
  for (const auto& h : report.hits) ids.push_back(h.rule->id);
  std::string all_ids;
  for (const auto& i : ids) all_ids += i + " ";
  CAPTURE(all_ids);
  CHECK(ids == std::vector<std::string>{"word", "subj", "both", "pat_unless"});
  CHECK(report.hits[0].count >= 5);
  CHECK(report.hits[2].where == "combination");
  CHECK(report.hits[2].snippet == "word and subj and not never");
}

TEST_CASE("engine: a snippet shows the decoded text around the match") {
  auto compiled = CompiledRules::build(parse(rule("r", "body", "expires today")), {});
  REQUIRE(compiled);
  auto msg = parse_mime(kMessage);
  auto report = (*compiled)->scan(msg, kMessage);
  REQUIRE(report.hits.size() == 1);
  CHECK(report.hits[0].snippet.find("password expires today") != std::string::npos);
}

TEST_CASE("engine: invalid UTF-8 in a text target is safe with utf8 rules") {
  std::string raw = "From: a@example.test\r\nSubject: x\r\nContent-Type: application/octet-stream\r\n"
                    "Content-Disposition: attachment; filename=\"caf\xe9\xff.exe\"\r\n\r\nMZ\r\n";
  auto compiled = CompiledRules::build(parse(rule("r", "attachment.name", "caf.+\\.exe$", "flags = [\"utf8\"]")), {});
  REQUIRE(compiled);
  auto report = (*compiled)->scan(parse_mime(raw), raw);
  CHECK(report.hits.size() == 1);
}

TEST_CASE("engine: a pattern Hyperscan refuses at compile names its rule's file:line") {
  // The parser's syntax check catches most refusals; whatever gets past it (e.g. "Pattern is too
  // large", slow to reproduce) is reported by the compile. Simulate one by editing a parsed rule.
  auto set = parse(rule("ok", "body", "fine") + rule("later", "body", "other") + rule("subj", "subject", "x"));
  set.rules[1].expression = "x(?=y)";
  auto compiled = CompiledRules::build(std::move(set), {});
  REQUIRE_FALSE(compiled);
  CHECK(compiled.error().message ==
        "e.toml:8: rule 'later': Hyperscan refuses the pattern: Zero-width assertions are not supported.");
}

TEST_CASE("engine: the database cache is used on the second build and skipped when unwritable") {
  auto dir = std::filesystem::temp_directory_path() / ("moat_hscache_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::string text = rule("a", "subject", "Password") + rule("b", "body", "expires") + rule("c", "header:X-Mailer", "Bulk");
  int cached = -1;
  auto first = CompiledRules::build(parse(text), {dir.string()}, &cached);
  REQUIRE(first);
  CHECK(cached == 0);
  std::size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) files += e.path().extension() == ".hsdb";
  CHECK(files == 3);
  auto second = CompiledRules::build(parse(text), {dir.string()}, &cached);
  REQUIRE(second);
  CHECK(cached == 3);
  auto msg = parse_mime(kMessage);
  CHECK((*second)->scan(msg, kMessage).hits.size() == 3);
  // A changed rule is a different key: compiled afresh.
  auto third = CompiledRules::build(parse(text + rule("d", "body", "today")), {dir.string()}, &cached);
  REQUIRE(third);
  CHECK(cached == 2);
  // A corrupt cache file is ignored.
  for (auto& e : std::filesystem::directory_iterator(dir)) std::ofstream(e.path()) << "garbage";
  auto fourth = CompiledRules::build(parse(text), {dir.string()}, &cached);
  REQUIRE(fourth);
  CHECK(cached == 0);
  CHECK((*fourth)->scan(msg, kMessage).hits.size() == 3);
  // Unwritable: a file where the directory should be.
  std::filesystem::remove_all(dir);
  std::ofstream(dir.string()) << "x";
  auto fifth = CompiledRules::build(parse(text), {(dir / "sub").string()}, &cached);
  REQUIRE(fifth);
  CHECK(cached == 0);
  std::filesystem::remove(dir);
}

TEST_CASE("engine: threads scan one set at once; a swap leaves old snapshots working") {
  RuleStore store;
  auto a = CompiledRules::build(parse(rule("a", "subject", "Password")), {});
  REQUIRE(a);
  store.swap(*a);
  auto msg = parse_mime(kMessage);
  std::atomic<int> hits_a{0}, hits_b{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto snap = store.current();
        auto report = snap->scan(msg, kMessage);
        if (report.hits.size() == 1 && report.hits[0].rule->id == "a") ++hits_a;
        else if (report.hits.size() == 2 && report.hits[0].rule->id == "b") ++hits_b;
        else ++bad;
      }
    });
  auto b = CompiledRules::build(parse(rule("b", "body", "expires") + rule("b2", "url", "login")), {});
  REQUIRE(b);
  auto old = store.current();
  store.swap(*b);
  for (auto& th : threads) th.join();
  CHECK(old->scan(msg, kMessage).hits.size() == 1);
  CHECK(store.current()->scan(msg, kMessage).hits.size() == 2);
  CHECK(bad == 0);
  CHECK(hits_a + hits_b == 800);
  CHECK(old->hit_count(0) == static_cast<std::uint64_t>(hits_a) + 1);
}

}  // namespace moat::scanners

namespace moat::scanners {

TEST_CASE("engine: the raw target fed in chunks while DATA arrives gives the same hits") {
  std::string rules = rule("span", "raw", "password.{0,40}today") + rule("tail", "raw", "--b--\\r\\n$") +
                      rule("three", "raw", "Content-Type", "min_count = 3") + rule("none", "raw", "zzzz") +
                      rule("subj", "subject", "Password");
  auto compiled = CompiledRules::build(parse(rules), {});
  REQUIRE(compiled);
  auto msg = parse_mime(kMessage);
  auto whole = (*compiled)->scan(msg, kMessage);
  std::vector<std::string> expected;
  for (const auto& h : whole.hits) expected.push_back(h.rule->id + "|" + h.where + "|" + h.snippet);
  CHECK(expected.size() == 4);  // span, tail, three, subj
  for (std::size_t chunk : {1u, 7u, 64u, 1000u, 100000u}) {
    CAPTURE(chunk);
    RawStream stream(*compiled);
    for (std::size_t i = 0; i < kMessage.size(); i += chunk) stream.feed(std::string_view(kMessage).substr(i, chunk));
    auto report = (*compiled)->scan(msg, kMessage, &stream);
    std::vector<std::string> got;
    for (const auto& h : report.hits) got.push_back(h.rule->id + "|" + h.where + "|" + h.snippet);
    CHECK(got == expected);
    CHECK(report.hits[2].count == whole.hits[2].count);
  }
  // A stream of another rule set is ignored: the raw target is scanned afresh.
  auto other = CompiledRules::build(parse(rule("x", "raw", "password")), {});
  REQUIRE(other);
  RawStream foreign(*other);
  foreign.feed(kMessage);
  CHECK((*compiled)->scan(msg, kMessage, &foreign).hits.size() == 4);
  // A stream dropped without a scan is closed by its destructor (ASan checks the leak).
  RawStream dropped(*compiled);
  dropped.feed("From: x\r\n");
}

}  // namespace moat::scanners
