#include "scanners/rule_file.hpp"

#include <fmt/format.h>
#include <hs/hs.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <toml.hpp>

namespace moat::scanners {
namespace {

using Value = toml::value;

std::string lower(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

bool valid_id(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool valid_header_name(std::string_view n) {
  if (n.empty()) return false;
  return std::all_of(n.begin(), n.end(), [](char c) { return c > 32 && c < 127 && c != ':'; });
}

struct Parser {
  std::string file;
  const RuleVariables& vars;
  std::vector<std::string>& errors;

  void error(const Value& at, const std::string& msg) {
    errors.push_back(fmt::format("{}:{}: {}", file, at.location().line(), msg));
  }

  const Value* find(const Value& t, const std::string& key) {
    const auto& tab = t.as_table();
    auto it = tab.find(key);
    return it == tab.end() ? nullptr : &it->second;
  }
  bool get(const Value& t, const std::string& key, std::string& out) {
    auto* v = find(t, key);
    if (!v) return false;
    if (v->is_string()) {
      out = v->as_string().str;
      return true;
    }
    error(*v, fmt::format("'{}' must be a string", key));
    return false;
  }
  std::vector<std::string> get_strings(const Value& t, const std::string& key) {
    std::vector<std::string> out;
    auto* v = find(t, key);
    if (!v) return out;
    if (!v->is_array()) {
      error(*v, fmt::format("'{}' must be an array of strings", key));
      return out;
    }
    for (const auto& e : v->as_array()) {
      if (e.is_string()) out.push_back(e.as_string().str);
      else error(e, fmt::format("'{}' must hold only strings", key));
    }
    return out;
  }

  // Expands ${name}; an unknown name is an error.
  std::string expand(const Value& at, const std::string& pattern) {
    std::string out;
    std::size_t i = 0;
    while (i < pattern.size()) {
      if (pattern[i] == '$' && i + 1 < pattern.size() && pattern[i + 1] == '{') {
        auto close = pattern.find('}', i);
        if (close == std::string::npos) {
          error(at, "unterminated ${ in pattern");
          return {};
        }
        std::string name = pattern.substr(i + 2, close - i - 2);
        auto it = vars.values.find(name);
        if (it == vars.values.end()) {
          error(at, fmt::format("unknown variable '${{{}}}' (known: ${{protected_domains}})", name));
          return {};
        }
        out += it->second;
        i = close + 1;
        continue;
      }
      out += pattern[i++];
    }
    return out;
  }

  void rule(const Value& t, RuleSet& set) {
    static const std::set<std::string> kKeys = {
        "id", "target", "pattern", "literal", "flags", "score", "action", "reply", "tag",
        "description", "shadow", "min_count", "requires", "unless"};
    for (const auto& [k, v] : t.as_table())
      if (!kKeys.count(k)) error(v, fmt::format("unknown key '{}' in [[rule]]", k));
    Rule r;
    r.file = file;
    r.line = static_cast<unsigned>(t.location().line());
    if (!get(t, "id", r.id)) {
      if (!find(t, "id")) error(t, "[[rule]] needs 'id'");
    } else if (!valid_id(r.id)) {
      error(*find(t, "id"), fmt::format("id '{}' must be 1-64 characters of a-z, 0-9 and _", r.id));
    }
    get(t, "description", r.description);
    if (r.description.empty() && !find(t, "description"))
      error(t, fmt::format("rule '{}' needs a 'description'", r.id));

    // Target.
    std::string target;
    if (get(t, "target", target)) {
      static const std::pair<std::string_view, Target> kTargets[] = {
          {"header", Target::Header}, {"subject", Target::Subject}, {"from.name", Target::FromName},
          {"body", Target::Body}, {"html", Target::Html}, {"raw", Target::Raw}, {"url", Target::Url},
          {"domain", Target::Domain}, {"attachment.name", Target::AttachmentName},
          {"attachment.type", Target::AttachmentType},
          {"attachment.content", Target::AttachmentContent}};
      bool found = false;
      if (target.rfind("header:", 0) == 0) {
        r.target = Target::Header;
        r.header_name = lower(target.substr(7));
        found = valid_header_name(r.header_name);
        if (!found) error(*find(t, "target"), fmt::format("'{}' names no valid header", target));
      } else {
        for (auto [name, tg] : kTargets)
          if (target == name) {
            r.target = tg;
            found = true;
          }
        if (!found)
          error(*find(t, "target"),
                fmt::format("unknown target '{}' (header:NAME, header, subject, from.name, body, "
                            "html, raw, url, domain, attachment.name, attachment.type, "
                            "attachment.content)", target));
      }
    } else if (!find(t, "target") && (find(t, "pattern") || find(t, "literal"))) {
      error(t, fmt::format("rule '{}' needs a 'target'", r.id));
    }

    // Flags.
    for (const auto& f : get_strings(t, "flags")) {
      if (f == "caseless") r.flags |= HS_FLAG_CASELESS;
      else if (f == "dotall") r.flags |= HS_FLAG_DOTALL;
      else if (f == "multiline") r.flags |= HS_FLAG_MULTILINE;
      else if (f == "utf8") r.flags |= HS_FLAG_UTF8 | HS_FLAG_UCP;
      else error(*find(t, "flags"), fmt::format("unknown flag '{}' (caseless, dotall, multiline, utf8)", f));
    }
    if ((r.flags & HS_FLAG_UTF8) &&
        (r.target == Target::Raw || r.target == Target::AttachmentContent))
      error(*find(t, "flags"), "flag 'utf8' cannot be used on raw or attachment.content (not text)");

    // Pattern.
    auto* pat = find(t, "pattern");
    auto* lit = find(t, "literal");
    if (pat && lit) error(*lit, "give either 'pattern' or 'literal', not both");
    std::string text;
    if (pat && get(t, "pattern", text)) {
      r.pattern_text = text;
      r.expression = expand(*pat, text);
      if (text.empty()) error(*pat, "'pattern' is empty");
    } else if (lit && !pat && get(t, "literal", text)) {
      r.pattern_text = text;
      r.expression = escape_literal(text);
      if (text.empty()) error(*lit, "'literal' is empty");
    }
    if (!r.expression.empty()) {
      hs_expr_info_t* info = nullptr;
      hs_compile_error_t* err = nullptr;
      if (hs_expression_info(r.expression.c_str(), r.flags, &info, &err) != HS_SUCCESS) {
        error(pat ? *pat : *lit, fmt::format("Hyperscan refuses the pattern: {}", err ? err->message : "?"));
        hs_free_compile_error(err);
      } else {
        if (info && info->min_width == 0)
          error(pat ? *pat : *lit, "the pattern can match the empty string: it would fire on everything");
        std::free(info);
      }
    }

    // Combination.
    r.requires_all = get_strings(t, "requires");
    r.unless_any = get_strings(t, "unless");
    if (!pat && !lit && r.requires_all.empty())
      error(t, fmt::format("rule '{}' needs 'pattern', 'literal' or 'requires'", r.id));
    if (auto* v = find(t, "min_count")) {
      if (!v->is_integer() || v->as_integer() < 1 || v->as_integer() > 10000)
        error(*v, "'min_count' must be an integer from 1 to 10000");
      else r.min_count = static_cast<unsigned>(v->as_integer());
      if (!pat && !lit) error(*v, "'min_count' needs a 'pattern' or 'literal'");
    }

    // Score and action.
    if (auto* v = find(t, "score")) {
      if (v->is_floating()) r.score = v->as_floating();
      else if (v->is_integer()) r.score = static_cast<double>(v->as_integer());
      else error(*v, "'score' must be a number");
    }
    std::string action;
    if (get(t, "action", action)) {
      if (action == "reject") r.action = RuleAction::Reject;
      else if (action == "quarantine") r.action = RuleAction::Quarantine;
      else if (action == "tag") r.action = RuleAction::Tag;
      else if (action == "score") r.action = RuleAction::Score;
      else error(*find(t, "action"), fmt::format("unknown action '{}' (score, reject, quarantine, tag)", action));
    }
    if (get(t, "reply", r.reply)) {
      if (r.action != RuleAction::Reject) error(*find(t, "reply"), "'reply' needs action = \"reject\"");
      if (std::any_of(r.reply.begin(), r.reply.end(), [](char c) {
            return static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126;
          }))
        error(*find(t, "reply"), "'reply' must be printable ASCII on one line");
      if (r.reply.size() > 400) error(*find(t, "reply"), "'reply' is longer than 400 characters");
    }
    if (get(t, "tag", r.tag)) {
      if (r.action != RuleAction::Tag) error(*find(t, "tag"), "'tag' needs action = \"tag\"");
      if (std::any_of(r.tag.begin(), r.tag.end(), [](char c) {
            return static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126;
          }))
        error(*find(t, "tag"), "'tag' must be printable ASCII on one line");
    }
    if (r.action == RuleAction::Tag && r.tag.empty()) error(t, fmt::format("rule '{}': action \"tag\" needs 'tag'", r.id));
    if (r.action == RuleAction::Score && !find(t, "score"))
      error(t, fmt::format("rule '{}' needs a 'score' or an 'action'", r.id));
    if (auto* v = find(t, "shadow")) {
      if (v->is_boolean()) r.shadow = v->as_boolean();
      else error(*v, "'shadow' must be true or false");
    }
    set.rules.push_back(std::move(r));
  }
};

}  // namespace

std::string_view to_string(Target t) {
  switch (t) {
    case Target::Header: return "header";
    case Target::Subject: return "subject";
    case Target::FromName: return "from.name";
    case Target::Body: return "body";
    case Target::Html: return "html";
    case Target::Raw: return "raw";
    case Target::Url: return "url";
    case Target::Domain: return "domain";
    case Target::AttachmentName: return "attachment.name";
    case Target::AttachmentType: return "attachment.type";
    case Target::AttachmentContent: return "attachment.content";
  }
  return "?";
}

std::string escape_literal(std::string_view literal) {
  std::string out;
  for (unsigned char c : literal) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ' || c == '_')
      out += static_cast<char>(c);
    else
      out += fmt::format("\\x{:02x}", c);
  }
  return out;
}

RuleVariables RuleVariables::from_domains(const std::vector<std::string>& domains) {
  std::string alt;
  for (const auto& d : domains) {
    if (d.empty() || d.front() == '[') continue;
    if (!alt.empty()) alt += '|';
    if (d.front() == '.') alt += "(?:[a-z0-9-]+\\.)*" + escape_literal(d.substr(1));
    else alt += escape_literal(d);
  }
  RuleVariables v;
  // No domains: a fragment that can never match, so a rule using it stays valid but silent.
  v.values["protected_domains"] = alt.empty() ? "(?:[^\\x00-\\xff]\\x00)" : "(?:" + alt + ")";
  return v;
}

void parse_rule_text_unsorted(std::string_view text, const std::string& file, const RuleVariables& vars,
                              RuleSet& out, std::vector<std::string>& errors);

void parse_rule_text(std::string_view text, const std::string& file, const RuleVariables& vars,
                     RuleSet& out, std::vector<std::string>& errors) {
  // TOML tables are unordered: sort this file's errors by line so they read top to bottom.
  std::vector<std::string> mine;
  parse_rule_text_unsorted(text, file, vars, out, mine);
  auto line_of = [&](const std::string& e) {
    return std::strtoul(e.c_str() + std::min(e.size(), file.size() + 1), nullptr, 10);
  };
  std::stable_sort(mine.begin(), mine.end(),
                   [&](const std::string& a, const std::string& b) { return line_of(a) < line_of(b); });
  errors.insert(errors.end(), mine.begin(), mine.end());
}

void parse_rule_text_unsorted(std::string_view text, const std::string& file, const RuleVariables& vars,
                              RuleSet& out, std::vector<std::string>& errors) {
  Value root;
  try {
    std::istringstream in{std::string(text)};
    root = toml::parse(in, file);
  } catch (const toml::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    if (what.rfind("[error] ", 0) == 0) what.erase(0, 8);
    errors.push_back(fmt::format("{}:{}: {}", file, e.location().line(), what));
    return;
  }
  Parser p{file, vars, errors};
  out.files.push_back(file);
  for (const auto& [k, v] : root.as_table()) {
    if (k != "rule") {
      p.error(v, fmt::format("unknown key '{}' at the top level (rules are [[rule]] tables)", k));
      continue;
    }
    if (!v.is_array()) {
      p.error(v, "'rule' must be an array of tables: [[rule]]");
      continue;
    }
    for (const auto& t : v.as_array()) {
      if (!t.is_table()) p.error(t, "'rule' entries must be tables");
      else p.rule(t, out);
    }
  }
}

void check_rule_set(const RuleSet& set, std::vector<std::string>& errors) {
  std::map<std::string, const Rule*, std::less<>> by_id;
  for (const auto& r : set.rules) {
    if (r.id.empty()) continue;
    auto [it, fresh] = by_id.emplace(r.id, &r);
    if (!fresh)
      errors.push_back(fmt::format("{}:{}: duplicate rule id '{}' (first at {}:{})", r.file, r.line,
                                   r.id, it->second->file, it->second->line));
  }
  for (const auto& r : set.rules) {
    for (const auto* list : {&r.requires_all, &r.unless_any}) {
      for (const auto& ref : *list) {
        auto it = by_id.find(ref);
        if (it == by_id.end()) {
          errors.push_back(fmt::format("{}:{}: rule '{}' refers to unknown rule '{}'", r.file, r.line, r.id, ref));
        } else if (it->second == &r) {
          errors.push_back(fmt::format("{}:{}: rule '{}' refers to itself", r.file, r.line, r.id));
        } else if (!it->second->requires_all.empty() || !it->second->unless_any.empty()) {
          // One level only: combinations evaluate in one pass and can never loop.
          errors.push_back(fmt::format("{}:{}: rule '{}' refers to '{}', which is itself a combination; "
                                       "refer to pattern rules only", r.file, r.line, r.id, ref));
        }
      }
    }
  }
}

Result<RuleSet> load_rule_dir(const std::string& dir, const RuleVariables& vars) {
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".toml" && it->is_regular_file()) files.push_back(it->path());
  if (ec) return Result<RuleSet>::fail(fmt::format("{}: cannot read rule directory: {}", dir, ec.message()));
  std::sort(files.begin(), files.end());
  RuleSet set;
  std::vector<std::string> errors;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      errors.push_back(fmt::format("{}: cannot open: {}", f.string(), std::strerror(errno)));
      continue;
    }
    std::stringstream buf;
    buf << in.rdbuf();
    parse_rule_text(buf.str(), f.string(), vars, set, errors);
  }
  check_rule_set(set, errors);
  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) all += (all.empty() ? "" : "\n") + e;
    return Result<RuleSet>::fail(all);
  }
  return set;
}

}  // namespace moat::scanners
