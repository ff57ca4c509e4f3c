#include "scanners/content_check.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace moat::scanners {
namespace {

// Client-controlled text in a log line: quoted, control characters and quotes replaced.
std::string quoted(std::string_view s, std::size_t max = 120) {
  std::string out = "\"";
  for (char c : s.substr(0, max)) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '"' || c == '\\') out += '?';
    else out += c;
  }
  return out + "\"";
}

}  // namespace

policy::Verdict ContentCheck::apply(const CompiledRules& rules, const MimeLimits& limits,
                                    policy::MessageContext& ctx) {
  MimeMessage msg = parse_mime(ctx.message, limits);
  for (const auto& issue : msg.issues) ctx.add_finding(issue.name, 0, issue.detail);
  ScanReport report = rules.scan(msg, ctx.message);
  policy::Verdict verdict = policy::Verdict::next();
  for (const auto& hit : report.hits) {
    const Rule& r = *hit.rule;
    if (r.shadow) {
      spdlog::info("sid={} qid={} event=shadow_rule rule={} where={} snippet={}", ctx.session.sid, ctx.qid,
                   r.id, quoted(hit.where), quoted(hit.snippet));
      continue;
    }
    // The summary line names the findings; this line says where each rule matched and on what.
    spdlog::info("sid={} qid={} event=rule_hit rule={} where={} snippet={}", ctx.session.sid, ctx.qid, r.id,
                 quoted(hit.where), quoted(hit.snippet));
    ctx.add_finding("rule." + r.id, r.score, hit.where + ": " + hit.snippet);
    switch (r.action) {
      case RuleAction::Reject:
        if (verdict.action != policy::Action::Reject)
          verdict = policy::Verdict::reject(550, "5.7.1", r.reply.empty() ? kDefaultRejectText : r.reply);
        break;
      case RuleAction::Quarantine:
        if (verdict.action == policy::Action::Continue) verdict.action = policy::Action::Quarantine;
        break;
      case RuleAction::Tag: {
        std::pair<std::string, std::string> header{"X-Moat-Tag", r.tag};
        if (std::find(ctx.add_headers.begin(), ctx.add_headers.end(), header) == ctx.add_headers.end())
          ctx.add_headers.push_back(std::move(header));
        break;
      }
      case RuleAction::Score:
        break;
    }
  }
  return verdict;
}

asio::awaitable<policy::Verdict> ContentCheck::run(policy::Stage, policy::MessageContext& ctx) {
  // The snapshot is taken once: a reload during this scan does not change what it uses.
  std::shared_ptr<const CompiledRules> rules = store_.current();
  if (!rules) co_return policy::Verdict::next();
  policy::Verdict v = apply(*rules, limits_, ctx);
  co_return v;
}

}  // namespace moat::scanners
