// Recipient validation at RCPT from a file, so that Moat never accepts mail it would later have
// to bounce (backscatter). The file lists valid addresses, one per line ("user@example.test"),
// or whole domains ("@example.test"); "#" starts a comment; matching ignores case. Only
// recipients in relay.domains are checked (a trusted client relaying elsewhere is not).
// The file is re-read when its modification time changes (checked at most once a second);
// a file that cannot be read keeps the last good list in force.
#pragma once

#include <chrono>
#include <ctime>
#include <string>
#include <string_view>
#include <unordered_set>

#include "policy/check.hpp"
#include "policy/relay_check.hpp"

namespace moat::policy {

class RecipientCheck final : public Check {
 public:
  RecipientCheck(std::string file, RelayCheck relay);

  std::string_view name() const override { return "recipients"; }
  bool runs_at(Stage stage) const override { return stage == Stage::RcptTo; }
  asio::awaitable<Verdict> run(Stage stage, MessageContext& ctx) override;

  // The decision for one address (local@domain).
  Verdict decide(std::string_view address);
  std::size_t size() const { return valid_.size(); }

 private:
  void reload_if_changed();

  std::string file_;
  RelayCheck relay_;  // for its relay.domains
  std::unordered_set<std::string> valid_;  // lower-case addresses and "@domain" entries
  std::timespec mtime_{};
  std::chrono::steady_clock::time_point next_stat_{};
};

}  // namespace moat::policy
