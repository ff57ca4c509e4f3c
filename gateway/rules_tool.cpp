#include "gateway/rules_tool.hpp"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "scanners/content_check.hpp"
#include "scanners/mime.hpp"
#include "scanners/rule_file.hpp"

namespace moat::gateway {
namespace {

constexpr const char* kRulesUsage = R"(usage:
  moat rules lint [--config FILE] DIR
  moat rules test [--config FILE] [--rules DIR] FILE.eml
  (reload a running server with SIGHUP: systemctl reload moat, or kill -HUP PID)
)";

std::string_view action_name(scanners::RuleAction a) {
  switch (a) {
    case scanners::RuleAction::Score: return "score";
    case scanners::RuleAction::Reject: return "reject";
    case scanners::RuleAction::Quarantine: return "quarantine";
    case scanners::RuleAction::Tag: return "tag";
  }
  return "?";
}

// A message file as SMTP would deliver it: CRLF line ends.
std::string to_crlf(const std::string& in) {
  std::string out;
  out.reserve(in.size() + in.size() / 40);
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r')) out += '\r';
    out += in[i];
  }
  return out;
}

int lint(const policy::Config& config, const std::string& dir) {
  auto compiled = compile_rules(config, dir);
  if (!compiled) {
    fmt::print(stderr, "{}\n", compiled.error().message);
    return 1;
  }
  const auto& set = (*compiled)->rules();
  fmt::print("{}: {} rules in {} files ok\n", dir, set.rules.size(), set.files.size());
  return 0;
}

int test(const policy::Config& config, const std::string& dir, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    fmt::print(stderr, "{}: cannot open: {}\n", file, std::strerror(errno));
    return 1;
  }
  std::stringstream buf;
  buf << in.rdbuf();
  auto compiled = compile_rules(config, dir);
  if (!compiled) {
    fmt::print(stderr, "{}\n", compiled.error().message);
    return 1;
  }
  scanners::MimeLimits limits;
  limits.max_decoded = config.server.max_message_size;
  policy::MessageContext ctx;
  ctx.message = to_crlf(buf.str());
  auto msg = scanners::parse_mime(ctx.message, limits);
  auto report = (*compiled)->scan(msg, ctx.message);
  for (const auto& issue : msg.issues) fmt::print("{}  {}\n", issue.name, issue.detail);
  for (const auto& hit : report.hits) {
    const auto& r = *hit.rule;
    fmt::print("rule.{}  score={:g} action={}{}  {}:{}\n    where: {}\n    match: {}\n", r.id, r.score,
               action_name(r.action), r.shadow ? " shadow" : "", r.file, r.line, hit.where, hit.snippet);
  }
  auto verdict = scanners::ContentCheck::apply(**compiled, limits, ctx);
  double total = 0;
  for (const auto& f : ctx.findings) total += f.score;
  fmt::print("{} rules hit; verdict: {}", report.hits.size(), policy::to_string(verdict.action));
  if (verdict.action == policy::Action::Reject)
    fmt::print(" ({} {} {})", verdict.reply.code, verdict.reply.enhanced, verdict.reply.text);
  fmt::print("; score {:g}", total);
  for (const auto& [name, value] : ctx.add_headers) fmt::print("; adds {}: {}", name, value);
  fmt::print("\n");
  return 0;
}

}  // namespace

Result<std::shared_ptr<const scanners::CompiledRules>> compile_rules(const policy::Config& config,
                                                                     const std::string& dir,
                                                                     int* from_cache) {
  using R = Result<std::shared_ptr<const scanners::CompiledRules>>;
  if (auto platform = scanners::check_hyperscan_platform(); !platform) return R::fail(platform.error().message);
  auto set = scanners::load_rule_dir(dir, scanners::RuleVariables::from_domains(config.relay.domains));
  if (!set) return R::fail(set.error().message);
  return scanners::CompiledRules::build(std::move(*set), {config.rules.cache_dir}, from_cache);
}

int rules_command(const policy::Config& config, const std::vector<std::string>& args) {
  if (args.size() == 2 && args[0] == "lint") return lint(config, args[1]);
  if (!args.empty() && args[0] == "test") {
    std::string dir = config.rules.dir.empty() ? "rules" : config.rules.dir;
    std::string file;
    for (std::size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--rules" && i + 1 < args.size()) dir = args[++i];
      else if (file.empty()) file = args[i];
      else file = "";  // two files: usage error below
    }
    if (!file.empty()) return test(config, dir, file);
  }
  fmt::print(stderr, "{}", kRulesUsage);
  return 2;
}

}  // namespace moat::gateway
