// ContentCheck: the content rules as a policy check at Stage::EndOfData. It parses the message
// (scanners/mime), scans it with the rule set current when it starts (a reload in the middle
// does not affect it), and turns each rule that fired into a finding "rule.<id>" with the rule's
// score; MIME structure problems become "mime.*" findings with score 0 (the Decider may score
// them by name). Direct actions: reject (550 5.7.1 with the rule's reply text) wins over
// quarantine, which wins over tag (an "X-Moat-Tag" header). Shadow rules are logged and counted
// but add no finding and take no action.
#pragma once

#include "policy/check.hpp"
#include "scanners/content_engine.hpp"
#include "scanners/mime.hpp"

namespace moat::scanners {

class ContentCheck : public policy::Check {
 public:
  ContentCheck(const RuleStore& store, MimeLimits limits) : store_(store), limits_(limits) {}

  std::string_view name() const override { return "content"; }
  bool runs_at(policy::Stage stage) const override { return stage == policy::Stage::EndOfData; }
  asio::awaitable<policy::Verdict> run(policy::Stage stage, policy::MessageContext& ctx) override;

  // The synchronous core of run(), for tools and tests: applies `rules` to ctx.message.
  static policy::Verdict apply(const CompiledRules& rules, const MimeLimits& limits,
                               policy::MessageContext& ctx);

 private:
  const RuleStore& store_;
  MimeLimits limits_;
};

inline constexpr const char* kDefaultRejectText = "Message refused by content policy";

}  // namespace moat::scanners
