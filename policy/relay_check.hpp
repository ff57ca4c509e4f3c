// Relay access control: the mandatory first check at RCPT. A recipient is accepted only when its
// domain is one of relay.domains, or when the client is in trusted_networks. The classic tricks
// that make a gateway relay for outsiders are refused for every domain, trusted client or not:
// percent hack (user%ext@ours), bang paths (ext!user@ours), quoted local parts holding @ % !,
// source routes (<@ours:user@ext>), and address literals not listed in relay.domains.
// (user@ext@ours is a syntax error, refused by the address parser with 501 5.1.3.)
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "policy/check.hpp"
#include "policy/config.hpp"

namespace moat::policy {

class RelayCheck final : public Check {
 public:
  explicit RelayCheck(const RelayConfig& config);

  std::string_view name() const override { return "relay"; }
  bool runs_at(Stage stage) const override { return stage == Stage::RcptTo; }
  asio::awaitable<Verdict> run(Stage stage, MessageContext& ctx) override;

  // The decision itself, synchronous and pure: what run() answers for this recipient.
  // Reject (554 5.7.1) when the recipient may not be relayed to; Accept for <Postmaster>
  // (RFC 5321 §4.5.1); otherwise next(): relaying is allowed and the RCPT stage goes on to
  // the other checks (the relay check is a gate, not a permit).
  Verdict decide(const SessionInfo& session, const Path& rcpt) const;
  // Whether `domain` (any case, optional trailing dot) is one of relay.domains; an entry
  // ".example.test" matches example.test and all its subdomains.
  bool is_local_domain(std::string_view domain) const;

 private:
  std::vector<std::string> exact_;     // "example.test", "[192.0.2.1]"
  std::vector<std::string> suffixes_;  // ".example.test"
  std::vector<Cidr> trusted_;
};

}  // namespace moat::policy
