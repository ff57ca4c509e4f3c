#include "scanners/rule_file.hpp"

#include <doctest/doctest.h>
#include <hs/hs.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace moat::scanners {
namespace {

RuleVariables vars() { return RuleVariables::from_domains({"example.test", ".corp.test"}); }

std::vector<std::string> parse_errors(const std::string& text) {
  RuleSet set;
  std::vector<std::string> errors;
  parse_rule_text(text, "t.toml", vars(), set, errors);
  check_rule_set(set, errors);
  return errors;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) s += e + "\n";
  return s;
}

}  // namespace

TEST_CASE("rule file: a complete rule parses into its fields") {
  RuleSet set;
  std::vector<std::string> errors;
  parse_rule_text(R"RULES(
[[rule]]
id = "exe_name"
target = "attachment.name"
pattern = '\.exe$'
flags = ["caseless", "utf8"]
action = "reject"
reply = "Executables are not accepted"
score = 5
description = "Windows executable by name"

[[rule]]
id = "subject_hdr"
target = "header:X-Mailer"
literal = "Evil (1.0)"
score = 2.5
description = "a mailer"
shadow = true
min_count = 2

[[rule]]
id = "combo"
requires = ["exe_name"]
unless = ["subject_hdr"]
action = "tag"
tag = "exe-no-mailer"
description = "combination"
)RULES", "a.toml", vars(), set, errors);
  check_rule_set(set, errors);
  CAPTURE(joined(errors));
  REQUIRE(errors.empty());
  REQUIRE(set.rules.size() == 3);
  const Rule& a = set.rules[0];
  CHECK(a.id == "exe_name");
  CHECK(a.line == 2);
  CHECK(a.target == Target::AttachmentName);
  CHECK(a.expression == "\\.exe$");
  CHECK(a.flags == (HS_FLAG_CASELESS | HS_FLAG_UTF8 | HS_FLAG_UCP));
  CHECK(a.action == RuleAction::Reject);
  CHECK(a.reply == "Executables are not accepted");
  CHECK(a.score == 5);
  const Rule& b = set.rules[1];
  CHECK(b.target == Target::Header);
  CHECK(b.header_name == "x-mailer");
  CHECK(b.expression == "Evil \\x281\\x2e0\\x29");
  CHECK(b.shadow);
  CHECK(b.min_count == 2);
  CHECK(b.score == 2.5);
  const Rule& c = set.rules[2];
  CHECK_FALSE(c.has_pattern());
  CHECK(c.requires_all == std::vector<std::string>{"exe_name"});
  CHECK(c.unless_any == std::vector<std::string>{"subject_hdr"});
  CHECK(c.action == RuleAction::Tag);
  CHECK(c.tag == "exe-no-mailer");
}

TEST_CASE("rule file: escape_literal keeps letters and escapes the rest") {
  CHECK(escape_literal("a.b*c d") == "a\\x2eb\\x2ac d");
  CHECK(escape_literal("") == "");
}

TEST_CASE("rule file: ${protected_domains} expands to the relay domains") {
  auto v = RuleVariables::from_domains({"example.test", ".corp.test", "[192.0.2.1]"});
  CHECK(v.values.at("protected_domains") == "(?:example\\x2etest|(?:[a-z0-9-]+\\.)*corp\\x2etest)");
  RuleSet set;
  std::vector<std::string> errors;
  parse_rule_text("[[rule]]\nid = \"x\"\ntarget = \"from.name\"\npattern = '${protected_domains}'\n"
                  "score = 1\ndescription = \"d\"\n", "v.toml", v, set, errors);
  REQUIRE(errors.empty());
  CHECK(set.rules[0].expression == v.values.at("protected_domains"));
}

// Every error path, with the line it must name.
TEST_CASE("rule file: every error names file:line and the reason") {
  const std::string ok_tail = "score = 1\ndescription = \"d\"\n";
  struct Row {
    std::string text;
    std::string error;  // expected substring of the one error line, "t.toml:LINE: ..."
  };
  Row rows[] = {
      {"[[rule]\n", "t.toml:1: "},
      {"rules = 1\n", "t.toml:1: unknown key 'rules' at the top level"},
      {"rule = 1\n", "t.toml:1: 'rule' must be an array of tables"},
      {"rule = [1]\n", "t.toml:1: 'rule' entries must be tables"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\n" + ok_tail + "colour = \"red\"\n",
       "t.toml:7: unknown key 'colour' in [[rule]]"},
      {"[[rule]]\ntarget = \"body\"\nliteral = \"x\"\n" + ok_tail, "t.toml:1: [[rule]] needs 'id'"},
      {"[[rule]]\nid = 7\ntarget = \"body\"\nliteral = \"x\"\n" + ok_tail, "t.toml:2: 'id' must be a string"},
      {"[[rule]]\nid = \"Bad-Id\"\ntarget = \"body\"\nliteral = \"x\"\n" + ok_tail,
       "t.toml:2: id 'Bad-Id' must be 1-64 characters"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nscore = 1\n",
       "t.toml:1: rule 'a' needs a 'description'"},
      {"[[rule]]\nid = \"a\"\nliteral = \"x\"\n" + ok_tail, "t.toml:1: rule 'a' needs a 'target'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"bodies\"\nliteral = \"x\"\n" + ok_tail,
       "t.toml:3: unknown target 'bodies'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"header:\"\nliteral = \"x\"\n" + ok_tail,
       "t.toml:3: 'header:' names no valid header"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nflags = [\"loud\"]\n" + ok_tail,
       "t.toml:5: unknown flag 'loud'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nflags = \"caseless\"\n" + ok_tail,
       "t.toml:5: 'flags' must be an array of strings"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nflags = [1]\n" + ok_tail,
       "t.toml:5: 'flags' must hold only strings"},
      {"[[rule]]\nid = \"a\"\ntarget = \"raw\"\nliteral = \"x\"\nflags = [\"utf8\"]\n" + ok_tail,
       "t.toml:5: flag 'utf8' cannot be used on raw"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\npattern = \"x\"\nliteral = \"y\"\n" + ok_tail,
       "t.toml:5: give either 'pattern' or 'literal', not both"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\npattern = \"\"\n" + ok_tail, "t.toml:4: 'pattern' is empty"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"\"\n" + ok_tail, "t.toml:4: 'literal' is empty"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\npattern = 'a(b'\n" + ok_tail,
       "t.toml:4: Hyperscan refuses the pattern: Missing close parenthesis for group started at index 1."},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\npattern = '(?<=ab)c\\1'\n" + ok_tail,
       "t.toml:4: Hyperscan refuses the pattern: "},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\npattern = 'x*'\n" + ok_tail,
       "t.toml:4: the pattern can match the empty string"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\npattern = '${nope}'\n" + ok_tail,
       "t.toml:4: unknown variable '${nope}'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\npattern = 'x${protected'\n" + ok_tail,
       "t.toml:4: unterminated ${ in pattern"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\npattern = 5\n" + ok_tail, "t.toml:4: 'pattern' must be a string"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\n" + ok_tail,
       "t.toml:1: rule 'a' needs 'pattern', 'literal' or 'requires'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nmin_count = 0\n" + ok_tail,
       "t.toml:5: 'min_count' must be an integer from 1 to 10000"},
      {"[[rule]]\nid = \"b\"\ntarget = \"body\"\nliteral = \"x\"\n" + ok_tail +
           "[[rule]]\nid = \"a\"\nrequires = [\"b\"]\nmin_count = 2\n" + ok_tail,
       "t.toml:10: 'min_count' needs a 'pattern' or 'literal'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nscore = \"high\"\ndescription = \"d\"\n",
       "t.toml:5: 'score' must be a number"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\ndescription = \"d\"\n",
       "t.toml:1: rule 'a' needs a 'score' or an 'action'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\naction = \"drop\"\n" + ok_tail,
       "t.toml:5: unknown action 'drop'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nreply = \"no\"\n" + ok_tail,
       "t.toml:5: 'reply' needs action = \"reject\""},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\naction = \"reject\"\nreply = \"a\\nb\"\n" + ok_tail,
       "t.toml:6: 'reply' must be printable ASCII on one line"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\naction = \"reject\"\nreply = \"" +
           std::string(401, 'x') + "\"\n" + ok_tail,
       "t.toml:6: 'reply' is longer than 400 characters"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\ntag = \"t\"\n" + ok_tail,
       "t.toml:5: 'tag' needs action = \"tag\""},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\naction = \"tag\"\ntag = \"a\\tb\"\n" + ok_tail,
       "t.toml:6: 'tag' must be printable ASCII on one line"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\naction = \"tag\"\n" + ok_tail,
       "t.toml:1: rule 'a': action \"tag\" needs 'tag'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nshadow = \"yes\"\n" + ok_tail,
       "t.toml:5: 'shadow' must be true or false"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\n" + ok_tail +
           "[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"y\"\n" + ok_tail,
       "t.toml:7: duplicate rule id 'a' (first at t.toml:1)"},
      {"[[rule]]\nid = \"a\"\nrequires = [\"zz\"]\n" + ok_tail, "t.toml:1: rule 'a' refers to unknown rule 'zz'"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nunless = [\"a\"]\n" + ok_tail,
       "t.toml:1: rule 'a' refers to itself"},
      {"[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\n" + ok_tail +
           "[[rule]]\nid = \"b\"\nrequires = [\"a\"]\n" + ok_tail +
           "[[rule]]\nid = \"c\"\nrequires = [\"b\"]\n" + ok_tail,
       "t.toml:12: rule 'c' refers to 'b', which is itself a combination"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.text);
    auto errors = parse_errors(row.text);
    CAPTURE(joined(errors));
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].find(row.error) == 0);
  }
}

TEST_CASE("rule file: a directory is read in name order and all errors are collected") {
  auto dir = std::filesystem::temp_directory_path() / ("moat_rules_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto write = [&](const char* name, const std::string& text) { std::ofstream(dir / name) << text; };
  write("b.toml", "[[rule]]\nid = \"b\"\ntarget = \"body\"\nliteral = \"x\"\nscore = 1\ndescription = \"d\"\n");
  write("a.toml", "[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nscore = 1\ndescription = \"d\"\n");
  write("notes.txt", "not a rule file");
  auto ok = load_rule_dir(dir.string(), vars());
  REQUIRE(ok);
  REQUIRE(ok->rules.size() == 2);
  CHECK(ok->rules[0].id == "a");
  CHECK(ok->rules[1].id == "b");
  write("c.toml", "[[rule]]\nid = \"a\"\ntarget = \"body\"\nliteral = \"x\"\nscore = 1\ndescription = \"d\"\n"
                  "[[rule]]\nid = \"d\"\ntarget = \"nowhere\"\nliteral = \"x\"\nscore = 1\ndescription = \"d\"\n");
  auto bad = load_rule_dir(dir.string(), vars());
  REQUIRE_FALSE(bad);
  std::string c = (dir / "c.toml").string();
  std::string a = (dir / "a.toml").string();
  CHECK(bad.error().message == c + ":9: unknown target 'nowhere' (header:NAME, header, subject, from.name, "
                                   "body, html, raw, url, domain, attachment.name, attachment.type, "
                                   "attachment.content)\n" +
                                   c + ":1: duplicate rule id 'a' (first at " + a + ":1)");
  auto missing = load_rule_dir((dir / "nope").string(), vars());
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message.find("cannot read rule directory") != std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace moat::scanners
