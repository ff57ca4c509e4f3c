#include "policy/relay_check.hpp"

#include <algorithm>

namespace moat::policy {
namespace {

Verdict relay_denied(std::string why) {
  return Verdict::reject(554, "5.7.1", "Relay access denied: " + std::move(why));
}

}  // namespace

RelayCheck::RelayCheck(const RelayConfig& config) : trusted_(config.trusted_networks) {
  for (const auto& d : config.domains) {
    if (d.size() > 1 && d.front() == '.') suffixes_.push_back(ascii_lower(d));
    else exact_.push_back(ascii_lower(d));
  }
}

bool RelayCheck::is_local_domain(std::string_view domain) const {
  std::string d = ascii_lower(domain);
  if (!d.empty() && d.back() == '.') d.pop_back();
  if (std::find(exact_.begin(), exact_.end(), d) != exact_.end()) return true;
  // ".example.test" matches example.test itself and every subdomain (config.hpp, README).
  return std::any_of(suffixes_.begin(), suffixes_.end(), [&](const std::string& s) {
    if (d.size() > s.size()) return d.compare(d.size() - s.size(), s.size(), s) == 0;
    return d.size() + 1 == s.size() && s.compare(1, d.size(), d) == 0;
  });
}

Verdict RelayCheck::decide(const SessionInfo& session, const Path& rcpt) const {
  if (rcpt.postmaster) return Verdict::accept();  // RFC 5321 §4.5.1: always accepted
  if (rcpt.null) return relay_denied("null recipient");
  if (rcpt.source_route) return relay_denied("source routes are not accepted");
  const Mailbox& m = rcpt.mailbox;
  // Anything in the local part that a downstream MTA could read as another routing address.
  if (m.local_value.find_first_of("@%!") != std::string::npos)
    return relay_denied("routing characters in local part");
  if (m.literal && !is_local_domain(m.domain))
    return relay_denied("address literal is not ours");
  bool trusted = std::any_of(trusted_.begin(), trusted_.end(),
                             [&](const Cidr& c) { return c.contains(session.client_ip); });
  // Relaying is allowed: no opinion, so that the stage's other checks (recipient validation,
  // rate limits) still run after this one. Accept would end the stage here.
  if (trusted || is_local_domain(m.domain)) return Verdict::next();
  return relay_denied("we do not relay for " + ascii_lower(m.domain));
}

asio::awaitable<Verdict> RelayCheck::run(Stage, MessageContext& ctx) {
  if (!ctx.current_rcpt) co_return Verdict::tempfail(451, "4.3.0", "Internal error: no recipient");
  co_return decide(ctx.session, ctx.current_rcpt->path);
}

}  // namespace moat::policy
