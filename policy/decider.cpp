#include "policy/decider.hpp"

#include <fmt/format.h>

namespace moat::policy {

double Decider::score(const Finding& f) const {
  auto it = config_.scores.find(f.name);
  return it == config_.scores.end() ? f.score : it->second;
}

double Decider::total(const std::vector<Finding>& findings) const {
  double sum = 0;
  for (const auto& f : findings) sum += score(f);
  return sum;
}

Verdict Decider::decide(Stage stage, const std::vector<Finding>& findings) const {
  if (findings.empty()) return Verdict::next();
  double sum = total(findings);
  if (sum >= config_.reject_score)
    return Verdict::reject(550, "5.7.1", fmt::format("Message refused by policy (score {:.1f})", sum));
  if (stage == Stage::EndOfData && sum >= config_.quarantine_score)
    return {Action::Quarantine, {}, {}};
  return Verdict::next();
}

}  // namespace moat::policy
