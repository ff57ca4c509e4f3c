#include "gateway/relay/callout_check.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "gateway/log.hpp"
#include "policy/address.hpp"

namespace moat::gateway {

using policy::Verdict;
using Clock = std::chrono::steady_clock;

CalloutCheck::CalloutCheck(asio::any_io_executor ex, const policy::Config& config)
    : ex_(std::move(ex)), config_(config), relay_(config.relay) {
  timing_.connect_timeout = timing_.command_timeout = timing_.data_timeout =
      config.relay.callout_timeout;
  for (const auto& route : config.routes) tls_.push_back(SmtpClient::make_tls_context(route));
}

void CalloutCheck::remember(const std::string& key, bool valid) {
  auto now = Clock::now();
  if (cache_.size() >= kMaxEntries) {
    std::erase_if(cache_, [&](const auto& kv) { return kv.second.expires <= now; });
    if (cache_.size() >= kMaxEntries) cache_.clear();  // bounded, whatever the load
  }
  auto ttl = valid ? config_.relay.callout_positive_ttl : config_.relay.callout_negative_ttl;
  cache_[key] = {valid, now + ttl};
}

asio::awaitable<ClientReply> CalloutCheck::probe(const std::string& address,
                                                 std::string_view log_prefix) {
  std::string domain = address.substr(address.rfind('@') + 1);
  const policy::Route* route = config_.route_for(domain);
  ClientReply error = ClientReply::local_failure(451, "451 4.4.4 no [[route]] for " + domain);
  if (!route) co_return error;
  std::size_t index = static_cast<std::size_t>(route - config_.routes.data());
  SmtpClient::Options opt;
  opt.helo = config_.server.hostname;
  opt.tls = route->tls;
  opt.server_name = route->tls_server_name;
  opt.tls_context = tls_[index].get();
  opt.timing = &timing_;
  for (const auto& host : route->hosts) {
    auto client = co_await SmtpClient::connect(ex_, host, opt, error);
    if (!client) {
      spdlog::info("{} event=callout_connect_failed relay={} error={}", log_prefix,
                   host.to_string(), kv(error.text));
      continue;
    }
    SpoolEnvelope env;  // the null sender: a probe must never cause mail to anyone
    ClientReply reply = co_await client->mail(env, 0);
    if (reply.positive()) {
      SpoolRecipient r;
      r.address = address;
      reply = co_await client->rcpt(r);
    } else if (reply.permanent()) {
      // The backend refuses our probe itself: nothing is known about the recipient.
      reply = ClientReply::local_failure(451, "451 4.4.0 MAIL FROM:<> refused: " + reply.text);
    }
    co_await client->quit();
    co_return reply;
  }
  co_return error;
}

asio::awaitable<Verdict> CalloutCheck::run(policy::Stage, policy::MessageContext& ctx) {
  if (!ctx.current_rcpt) co_return Verdict::next();
  const std::string& address = ctx.current_rcpt->address;
  auto at = address.rfind('@');
  if (at == std::string::npos || !relay_.is_local_domain(address.substr(at + 1)))
    co_return Verdict::next();
  std::string key = policy::ascii_lower(address);
  std::string rejected = fmt::format("<{}>: Recipient address rejected: undeliverable address",
                                     address);
  if (auto it = cache_.find(key); it != cache_.end() && it->second.expires > Clock::now()) {
    if (it->second.valid) co_return Verdict::next();
    co_return Verdict::reject(550, "5.1.1", rejected);
  }
  std::string prefix = fmt::format("sid={} qid={}", ctx.session.sid, ctx.qid.empty() ? "-" : ctx.qid);
  ClientReply reply = co_await probe(address, prefix);
  spdlog::info("{} event=callout rcpt={} reply={}", prefix, kv("<" + address + ">"),
               kv(reply.text));
  if (reply.positive()) {
    remember(key, true);
    co_return Verdict::next();
  }
  if (reply.permanent() && !reply.local) {
    remember(key, false);
    co_return Verdict::reject(550, "5.1.1", rejected);
  }
  co_return Verdict::tempfail(
      450, "4.1.1",
      fmt::format("<{}>: Recipient address verification failed, try again later", address));
}

}  // namespace moat::gateway
