#include "policy/greylist.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <charconv>

#include "policy/address.hpp"
#include "policy/rate_limit.hpp"

namespace moat::policy {
namespace {

std::string domain_part(std::string_view address) {
  auto at = address.rfind('@');
  return at == std::string_view::npos ? "" : ascii_lower(address.substr(at + 1));
}

}  // namespace

GreylistCheck::GreylistCheck(GreylistConfig config, StateStore& store, StateConfig state,
                             std::function<std::int64_t()> clock)
    : config_(std::move(config)), store_(store), state_(std::move(state)),
      clock_(std::move(clock)) {}

asio::awaitable<Verdict> GreylistCheck::run(Stage, MessageContext& ctx) {
  if (!ctx.current_rcpt) co_return Verdict::next();
  const auto& ip = ctx.session.client_ip;
  for (const auto& n : config_.exempt_networks)
    if (n.contains(ip)) co_return Verdict::next();
  const std::string sender = ascii_lower(ctx.envelope.sender.address());
  const std::string rcpt = ascii_lower(ctx.current_rcpt->address);
  if (domain_listed(config_.exempt_domains, domain_part(sender)) ||
      domain_listed(config_.exempt_domains, domain_part(rcpt)))
    co_return Verdict::next();

  // Retries may come from another address of the same sending farm: key on the network.
  std::string net = Cidr::of(ip, ip.is_v4() ? 24 : 64).to_string();
  std::string allow_key = fmt::format("{}grey:awl:{}", state_.prefix, net);
  std::string key = fmt::format("{}grey:{}:<{}>:<{}>", state_.prefix, net, sender, rcpt);
  std::string prefix = fmt::format("sid={} qid={}", ctx.session.sid, ctx.qid.empty() ? "-" : ctx.qid);

  if (config_.auto_allowlist > 0) {
    auto passes = co_await store_.get(allow_key);
    if (!passes) co_return state_failure(state_, "greylist", ctx, passes.error().message);
    std::int64_t n = 0;
    if (*passes) std::from_chars((*passes)->data(), (*passes)->data() + (*passes)->size(), n);
    if (n >= config_.auto_allowlist) co_return Verdict::next();
  }
  auto seen = co_await store_.get(key);
  if (!seen) co_return state_failure(state_, "greylist", ctx, seen.error().message);
  const std::int64_t now = clock_();
  auto defer = [&](std::int64_t wait) {
    ctx.add_finding("greylist.deferred", 0, net);
    return Verdict::tempfail(
        451, "4.7.1",
        fmt::format("Greylisted: please try again in {} seconds", std::max<std::int64_t>(wait, 1)));
  };
  if (!*seen) {
    auto set = co_await store_.set(key, std::to_string(now), config_.retry_window, true);
    if (!set) co_return state_failure(state_, "greylist", ctx, set.error().message);
    spdlog::info("{} event=greylist status=new net={} rcpt={:?}", prefix, net, rcpt);
    co_return defer(config_.delay.count());
  }
  if (**seen == "pass") co_return Verdict::next();
  std::int64_t first = 0;
  std::from_chars((*seen)->data(), (*seen)->data() + (*seen)->size(), first);
  if (now - first < config_.delay.count()) {
    spdlog::info("{} event=greylist status=early net={} rcpt={:?}", prefix, net, rcpt);
    co_return defer(config_.delay.count() - (now - first));
  }
  auto set = co_await store_.set(key, "pass", config_.pass_ttl);
  if (!set) co_return state_failure(state_, "greylist", ctx, set.error().message);
  if (config_.auto_allowlist > 0) {
    // Counted as a string so get() reads it; incr() keeps it atomic across nodes.
    auto n = co_await store_.incr(allow_key, config_.pass_ttl);
    if (!n) co_return state_failure(state_, "greylist", ctx, n.error().message);
  }
  spdlog::info("{} event=greylist status=passed net={} rcpt={:?} waited={}", prefix, net, rcpt,
               now - first);
  co_return Verdict::next();
}

}  // namespace moat::policy
