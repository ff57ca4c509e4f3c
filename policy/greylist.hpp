// Greylisting (RFC 6647) at RCPT, off by default. A triplet (client /24 or /64, sender,
// recipient) seen for the first time is deferred with 451 4.7.1; a retry after `delay` and
// within `retry_window` passes and is remembered for `pass_ttl`. A client network whose retries
// passed `auto_allowlist` times is not greylisted any more. Exempt: listed networks, and listed
// sender or recipient domains. State lives in the StateStore (shared through Redis).
#pragma once

#include <ctime>
#include <functional>

#include "policy/check.hpp"
#include "policy/config.hpp"
#include "policy/state_store.hpp"

namespace moat::policy {

class GreylistCheck final : public Check {
 public:
  // `clock` gives Unix seconds (tests replace it).
  GreylistCheck(GreylistConfig config, StateStore& store, StateConfig state,
                std::function<std::int64_t()> clock = [] { return std::int64_t(std::time(nullptr)); });

  std::string_view name() const override { return "greylist"; }
  bool runs_at(Stage stage) const override { return stage == Stage::RcptTo; }
  asio::awaitable<Verdict> run(Stage stage, MessageContext& ctx) override;

 private:
  GreylistConfig config_;
  StateStore& store_;
  StateConfig state_;
  std::function<std::int64_t()> clock_;
};

}  // namespace moat::policy
