// Decider: turns the findings collected so far into a verdict through configured thresholds.
// Findings carry a default score from their check; [decider.scores] may override any of them by
// name. At every stage a total at or above reject_score rejects; at end of data a total at or
// above quarantine_score quarantines. Below that the Decider has no opinion.
#pragma once

#include <string>
#include <vector>

#include "policy/config.hpp"
#include "policy/verdict.hpp"

namespace moat::policy {

class Decider {
 public:
  explicit Decider(DeciderConfig config) : config_(std::move(config)) {}

  double score(const Finding& f) const;
  double total(const std::vector<Finding>& findings) const;
  Verdict decide(Stage stage, const std::vector<Finding>& findings) const;

 private:
  DeciderConfig config_;
};

}  // namespace moat::policy
