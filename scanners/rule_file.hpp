// Rule files: the content rules the security team edits (format in rules/README.md). A rule set
// is every *.toml file of one directory, read in name order. Parsing checks everything it can
// without compiling a database: keys, targets, flags, actions, references between rules, and
// each pattern's syntax through Hyperscan itself, so that `moat rules lint` and a reload report
// every problem as "file:line: reason".
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "policy/result.hpp"

namespace moat::scanners {

// What a rule's pattern is matched against. Each class gets its own Hyperscan database.
enum class Target {
  Header,             // "header:NAME" (one header) or "header" (every header), "Name: value"
                      // decoded; for header:NAME the value alone
  Subject,            // decoded Subject
  FromName,           // display name of the From address
  Body,               // decoded text of text/plain parts and the visible text of text/html parts
  Html,               // decoded source of text/html parts
  Raw,                // the message as received (header + body, CRLF)
  Url,                // each URL found in the bodies
  Domain,             // the host of each URL, lower case
  AttachmentName,     // each attachment's file name, and each entry name inside zip archives
  AttachmentType,     // each attachment's true type (libmagic), and each zip entry's
  AttachmentContent,  // each attachment's decoded bytes
};
inline constexpr int kTargetCount = 11;
std::string_view to_string(Target t);

enum class RuleAction { Score, Reject, Quarantine, Tag };

struct Rule {
  std::string id;           // [a-z0-9_]+, unique in the set; findings are "rule.<id>"
  std::string file;
  unsigned line = 0;        // where [[rule]] starts
  Target target = Target::Body;
  std::string header_name;  // for header:NAME, lower case
  std::string expression;   // Hyperscan regex (a literal is escaped, variables expanded)
  std::string pattern_text; // as written, for messages
  unsigned flags = 0;       // HS_FLAG_*
  double score = 0;
  RuleAction action = RuleAction::Score;
  std::string reply;        // Reject: the reply text
  std::string tag;          // Tag: value of the X-Moat-Tag header
  std::string description;
  bool shadow = false;      // logged and counted, no effect on the verdict
  unsigned min_count = 1;   // matches needed (summed over all parts of the target)
  std::vector<std::string> requires_all;  // fires only when all of these fired ...
  std::vector<std::string> unless_any;    // ... and none of these
  bool has_pattern() const { return !expression.empty(); }
};

struct RuleSet {
  std::vector<Rule> rules;
  std::vector<std::string> files;  // files read, for messages
};

// Values a pattern may use as ${name}. "protected_domains" comes from [relay] domains.
struct RuleVariables {
  std::map<std::string, std::string, std::less<>> values;  // name → regex fragment
  // ${protected_domains}: an alternation matching each domain (".example.test" entries also
  // match subdomains), escaped for Hyperscan.
  static RuleVariables from_domains(const std::vector<std::string>& domains);
};

// Parses one file's text. Appends rules to `out` and errors ("file:line: reason") to `errors`.
void parse_rule_text(std::string_view text, const std::string& file, const RuleVariables& vars,
                     RuleSet& out, std::vector<std::string>& errors);

// Reads every *.toml file in `dir` (name order) and checks the set as a whole (unique ids,
// references). On any problem the Error holds one "file:line: reason" per line.
Result<RuleSet> load_rule_dir(const std::string& dir, const RuleVariables& vars);

// Checks a parsed set as a whole; appends errors. Used by load_rule_dir and the tests.
void check_rule_set(const RuleSet& set, std::vector<std::string>& errors);

// Escapes a literal for use in a Hyperscan expression.
std::string escape_literal(std::string_view literal);

}  // namespace moat::scanners
