#include "policy/rate_limit.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "policy/address.hpp"

namespace moat::policy {
namespace {

Stage stage_of(LimitCounts c) {
  switch (c) {
    case LimitCounts::Connections: return Stage::Connect;
    case LimitCounts::Messages: return Stage::MailFrom;
    case LimitCounts::Recipients: return Stage::RcptTo;
    case LimitCounts::Bytes: return Stage::EndOfData;
  }
  return Stage::Connect;
}

std::string_view key_name(LimitKey k) {
  switch (k) {
    case LimitKey::ClientIp: return "ip";
    case LimitKey::ClientNet: return "net";
    case LimitKey::Helo: return "helo";
    case LimitKey::Sender: return "from";
    case LimitKey::SenderDomain: return "fromdom";
    case LimitKey::Recipient: return "rcpt";
    case LimitKey::RcptDomain: return "rcptdom";
  }
  return "?";
}

std::string domain_part(std::string_view address) {
  auto at = address.rfind('@');
  return at == std::string_view::npos ? "" : ascii_lower(address.substr(at + 1));
}

}  // namespace

bool domain_listed(const std::vector<std::string>& list, std::string_view domain) {
  for (const auto& d : list) {
    if (d == domain) return true;
    if (d[0] == '.' && (domain == std::string_view(d).substr(1) ||
                        (domain.size() > d.size() &&
                         domain.compare(domain.size() - d.size(), d.size(), d) == 0)))
      return true;
  }
  return false;
}

Verdict state_failure(const StateConfig& state, std::string_view check, const MessageContext& ctx,
                      const std::string& error) {
  spdlog::error("sid={} qid={} event=state_error check={} on_error={} error={:?}",
                ctx.session.sid, ctx.qid.empty() ? "-" : ctx.qid, check,
                state.fail_open ? "allow" : "tempfail", error);
  if (state.fail_open) return Verdict::next();
  return Verdict::tempfail(451, "4.3.0", "Temporary local problem, try again later");
}

RateLimitCheck::RateLimitCheck(std::vector<LimitConfig> limits, StateStore& store,
                               StateConfig state)
    : limits_(std::move(limits)), store_(store), state_(std::move(state)) {}

bool RateLimitCheck::runs_at(Stage stage) const {
  for (const auto& l : limits_)
    if (stage_of(l.counts) == stage) return true;
  return false;
}

std::string RateLimitCheck::key_value(const LimitConfig& limit, const MessageContext& ctx) {
  const auto& ip = ctx.session.client_ip;
  switch (limit.key) {
    case LimitKey::ClientIp: return ip.to_string();
    case LimitKey::ClientNet: return Cidr::of(ip, ip.is_v4() ? 24 : 64).to_string();
    case LimitKey::Helo: return ascii_lower(ctx.session.helo);
    case LimitKey::Sender: {
      std::string s = ascii_lower(ctx.envelope.sender.address());
      return s.empty() ? "<>" : s;
    }
    case LimitKey::SenderDomain: return domain_part(ctx.envelope.sender.address());
    case LimitKey::Recipient:
      return ctx.current_rcpt ? ascii_lower(ctx.current_rcpt->address) : "";
    case LimitKey::RcptDomain:
      return ctx.current_rcpt ? domain_part(ctx.current_rcpt->address) : "";
  }
  return "";
}

bool RateLimitCheck::exempt(const LimitConfig& limit, const MessageContext& ctx) {
  for (const auto& n : limit.exempt_networks)
    if (n.contains(ctx.session.client_ip)) return true;
  std::string domain;
  if (limit.key == LimitKey::Sender || limit.key == LimitKey::SenderDomain)
    domain = domain_part(ctx.envelope.sender.address());
  else if ((limit.key == LimitKey::Recipient || limit.key == LimitKey::RcptDomain) &&
           ctx.current_rcpt)
    domain = domain_part(ctx.current_rcpt->address);
  return !domain.empty() && domain_listed(limit.exempt_domains, domain);
}

asio::awaitable<Verdict> RateLimitCheck::run(Stage stage, MessageContext& ctx) {
  for (const auto& l : limits_) {
    if (stage_of(l.counts) != stage || exempt(l, ctx)) continue;
    std::string value = key_value(l, ctx);
    if (value.empty()) continue;
    double cost = l.counts == LimitCounts::Bytes ? static_cast<double>(ctx.message_size) : 1.0;
    std::string key = fmt::format("{}limit:{}:{}:{}", state_.prefix, l.name, key_name(l.key), value);
    auto period = std::chrono::duration_cast<std::chrono::milliseconds>(l.per);
    auto ok = co_await store_.take(key, l.burst, period, cost);
    if (!ok) {
      Verdict v = state_failure(state_, "ratelimit", ctx, ok.error().message);
      if (v.final()) co_return v;
      continue;
    }
    if (*ok) continue;
    ctx.add_finding("limit." + l.name, 0, value);
    spdlog::info("sid={} qid={} event=limit name={} key={} value={:?}", ctx.session.sid,
                 ctx.qid.empty() ? "-" : ctx.qid, l.name, key_name(l.key), value);
    std::string text = fmt::format("Error: rate limit '{}' exceeded, try again later", l.name);
    switch (stage) {
      case Stage::Connect: co_return Verdict::tempfail(421, "4.7.0", text);
      case Stage::EndOfData: co_return Verdict::tempfail(451, "4.7.1", text);
      default: co_return Verdict::tempfail(450, "4.7.1", text);
    }
  }
  co_return Verdict::next();
}

}  // namespace moat::policy
