// Recipient callout at RCPT ([relay] callout = true), like Postfix's
// reject_unverified_recipient: a recipient of a relay domain that Moat has not seen recently is
// probed at its route's backend (EHLO, MAIL FROM:<>, RCPT TO, QUIT), so that Moat never accepts
// mail the backend would refuse and Moat would then have to bounce (backscatter).
//   backend 2xx → accepted, remembered for callout_positive_ttl;
//   backend 5xx → 550 5.1.1, remembered for callout_negative_ttl;
//   4xx, no connection, timeout → 450 4.1.1 and nothing remembered (never an accept).
// The cache is per process and bounded; addresses are compared without regard to case.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/ssl/context.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "gateway/relay/smtp_client.hpp"
#include "policy/check.hpp"
#include "policy/config.hpp"
#include "policy/relay_check.hpp"

namespace moat::gateway {

class CalloutCheck final : public policy::Check {
 public:
  CalloutCheck(asio::any_io_executor ex, const policy::Config& config);

  std::string_view name() const override { return "callout"; }
  bool runs_at(policy::Stage stage) const override { return stage == policy::Stage::RcptTo; }
  asio::awaitable<policy::Verdict> run(policy::Stage stage, policy::MessageContext& ctx) override;

  static constexpr std::size_t kMaxEntries = 100000;

 private:
  struct Entry {
    bool valid;
    std::chrono::steady_clock::time_point expires;
  };
  // The backend's answer to RCPT TO:<address>, or a local failure.
  asio::awaitable<ClientReply> probe(const std::string& address, std::string_view log_prefix);
  void remember(const std::string& key, bool valid);

  asio::any_io_executor ex_;
  const policy::Config& config_;
  policy::RelayCheck relay_;  // for its relay.domains
  policy::DeliveryConfig timing_;  // every wait bounded by callout_timeout
  std::vector<std::unique_ptr<asio::ssl::context>> tls_;  // per route
  std::unordered_map<std::string, Entry> cache_;
};

}  // namespace moat::gateway
