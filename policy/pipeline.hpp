// Pipeline: runs the checks of one stage in order; the first final verdict wins (Postfix's
// restriction lists: no opinion / permit / reject); a permit (Accept) also skips the Decider
// for that stage. When no check decided, the Decider weighs the findings. The relay check is a constructor argument and always runs first at RCPT, so no
// assembly of checks can leave it out.
#pragma once

#include <memory>
#include <vector>

#include "policy/check.hpp"
#include "policy/decider.hpp"
#include "policy/relay_check.hpp"

namespace moat::policy {

class Pipeline {
 public:
  Pipeline(RelayCheck relay, std::vector<std::unique_ptr<Check>> checks, Decider decider);

  // Runs `stage`. Returns Continue or Accept when the stage passes, otherwise the verdict of the
  // check or Decider that ended it; Verdict::check names whoever decided. Never throws.
  asio::awaitable<Verdict> run(Stage stage, MessageContext& ctx) const;

  const Decider& decider() const { return decider_; }

 private:
  std::vector<std::unique_ptr<Check>> checks_;  // checks_[0] is the RelayCheck
  Decider decider_;
};

}  // namespace moat::policy
