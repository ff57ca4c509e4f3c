// Rate limits ([[limit]]): token buckets in the StateStore, one per limit and key value
// (client address, its /24 or /64, HELO name, sender, sender domain, recipient, recipient
// domain), counting connections, messages, recipients or bytes. Each stage's limits run in
// config order; the first that is out of tokens refuses, naming the limit:
//   connect 421 4.7.0, MAIL and RCPT 450 4.7.1, end of data 451 4.7.1,
// with the finding `limit.<name>` (detail: the key value). A store failure applies
// [state] on_error. Tokens are taken when the command is seen, accepted or not later.
#pragma once

#include <string>
#include <vector>

#include "policy/check.hpp"
#include "policy/config.hpp"
#include "policy/state_store.hpp"

namespace moat::policy {

class RateLimitCheck final : public Check {
 public:
  RateLimitCheck(std::vector<LimitConfig> limits, StateStore& store, StateConfig state);

  std::string_view name() const override { return "ratelimit"; }
  bool runs_at(Stage stage) const override;
  asio::awaitable<Verdict> run(Stage stage, MessageContext& ctx) override;

  // The key value of `limit` in `ctx` ("" when it has none, e.g. no HELO yet), and whether
  // the limit's exemptions cover it.
  static std::string key_value(const LimitConfig& limit, const MessageContext& ctx);
  static bool exempt(const LimitConfig& limit, const MessageContext& ctx);

 private:
  std::vector<LimitConfig> limits_;
  StateStore& store_;
  StateConfig state_;
};

// What a check does when the StateStore failed: allow (and log loudly) or 451 4.3.0.
Verdict state_failure(const StateConfig& state, std::string_view check, const MessageContext& ctx,
                      const std::string& error);

// Whether `domain` (lower case) is in `list` ("x.test", or ".x.test" for it and subdomains).
bool domain_listed(const std::vector<std::string>& list, std::string_view domain);

}  // namespace moat::policy
