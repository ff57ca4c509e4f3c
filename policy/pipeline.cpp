#include "policy/pipeline.hpp"

#include <exception>

namespace moat::policy {

Pipeline::Pipeline(RelayCheck relay, std::vector<std::unique_ptr<Check>> checks, Decider decider)
    : decider_(std::move(decider)) {
  checks_.push_back(std::make_unique<RelayCheck>(std::move(relay)));
  for (auto& c : checks) checks_.push_back(std::move(c));
}

asio::awaitable<Verdict> Pipeline::run(Stage stage, MessageContext& ctx) const {
  for (const auto& check : checks_) {
    if (!check->runs_at(stage)) continue;
    Verdict v;
    try {
      v = co_await check->run(stage, ctx);
    } catch (const std::exception& e) {
      // A bug in a check must never accept mail: fail safe with a temporary error, and leave
      // a finding so that the log line says what happened.
      ctx.add_finding("internal.check_error", 0, std::string(check->name()) + ": " + e.what());
      v = Verdict::tempfail(451, "4.3.0", "Temporary internal error, try again later");
    } catch (...) {
      // Not a std::exception (a library's own type, a thrown int): the same fail-safe answer,
      // so that run() keeps its promise never to throw.
      ctx.add_finding("internal.check_error", 0,
                      std::string(check->name()) + ": unknown exception");
      v = Verdict::tempfail(451, "4.3.0", "Temporary internal error, try again later");
    }
    // The first final verdict wins. Accept (permit, e.g. an allow list) ends the stage
    // as well, Decider included: an allow-listed sender is not rejected on its score.
    if (v.final()) {
      v.check = std::string(check->name());
      co_return v;
    }
  }
  Verdict d = decider_.decide(stage, ctx.findings);
  if (d.final()) d.check = "decider";
  co_return d;
}

}  // namespace moat::policy
