#include "gateway/relay/queue_manager.hpp"

#include <fmt/format.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "gateway/blocking.hpp"
#include "gateway/log.hpp"
#include "gateway/relay/dsn.hpp"

namespace moat::gateway {
namespace {

constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);
using State = SpoolRecipient::State;

std::int64_t now_s() { return static_cast<std::int64_t>(std::time(nullptr)); }

std::string domain_of(const std::string& address) {
  auto at = address.rfind('@');
  return at == std::string::npos ? "" : address.substr(at + 1);
}

std::string host_key(std::size_t route_index, const policy::Endpoint& host) {
  return fmt::format("{}/{}", route_index, host.to_string());
}

}  // namespace

QueueManager::QueueManager(asio::io_context& io, const policy::Config& config, Spool& spool,
                           asio::thread_pool& blocking)
    : io_(io), config_(config), spool_(spool), blocking_(blocking), wake_(io) {
  for (const auto& route : config_.routes) tls_.push_back(SmtpClient::make_tls_context(route));
}

std::chrono::seconds QueueManager::backoff(const policy::DeliveryConfig& d, int attempts) {
  auto wait = d.retry_min;
  for (int i = 1; i < attempts && wait < d.retry_max; ++i) wait *= 2;
  return std::min(wait, d.retry_max);
}

void QueueManager::schedule(std::int64_t due, std::string state, std::string qid) {
  if (!known_.insert(qid).second) return;
  due_.emplace(due, Due{std::move(state), std::move(qid)});
  wake();
}

void QueueManager::wake() { wake_.expires_at(std::chrono::steady_clock::time_point::min()); }

void QueueManager::start() {
  if (!config_.delivery.enabled) {
    spdlog::warn("event=delivery_paused hint=\"[delivery] enabled = false: mail stays in active/\"");
    return;
  }
  running_ = true;
  // Queue ids sort by arrival, so list() hands them over oldest first.
  for (const auto& qid : spool_.list("active")) schedule(0, "active", qid);
  for (const auto& qid : spool_.list("deferred")) {
    auto msg = spool_.read("deferred", qid);
    schedule(msg ? msg->envelope.next_attempt : 0, "deferred", qid);
  }
  spdlog::info("event=queue_started queued={}", known_.size());
  asio::co_spawn(io_, scheduler(), asio::detached);
}

void QueueManager::enqueue(const std::string& qid) {
  if (running_) schedule(0, "active", qid);
}

void QueueManager::stop() {
  running_ = false;
  wake_.cancel();
  for (auto& [key, list] : idle_)
    for (auto& idle : list) asio::co_spawn(io_, idle.client->quit(), asio::detached);
  idle_.clear();
}

asio::awaitable<void> QueueManager::scheduler() {
  while (running_) {
    std::int64_t now = now_s();
    while (!due_.empty() && due_.begin()->first <= now && in_flight_ < config_.delivery.concurrency) {
      Due d = std::move(due_.begin()->second);
      due_.erase(due_.begin());
      ++in_flight_;
      asio::co_spawn(io_, deliver(std::move(d.state), std::move(d.qid)), asio::detached);
    }
    // Sleep until the next message is due, or until enqueue() or a finished delivery wakes
    // us; at most a few seconds, to sweep idle connections and pick up messages that
    // `moat queue flush/release` moved into active/.
    auto sleep = std::chrono::seconds(5);
    if (!due_.empty() && in_flight_ < config_.delivery.concurrency)
      sleep = std::min(sleep, std::chrono::seconds(std::max<std::int64_t>(due_.begin()->first - now, 1)));
    wake_.expires_after(sleep);
    co_await wake_.async_wait(kTuple);
    if (!running_) break;
    auto t = std::chrono::steady_clock::now();
    if (t >= next_scan_) {
      // Only for what `moat queue` moved into active/; sessions and deliveries call enqueue()
      // and wake(), so scanning at each wake-up would only cost a readdir per message.
      next_scan_ = t + std::chrono::seconds(5);
      auto listed = co_await offload(blocking_, [this] { return spool_.list("active"); });
      for (const auto& qid : listed)
        if (!known_.count(qid)) schedule(0, "active", qid);
    }
    for (auto& [key, list] : idle_) {
      std::erase_if(list, [&](Idle& idle) {
        if (idle.until > t) return false;
        --open_[key];
        asio::co_spawn(io_, idle.client->quit(), asio::detached);
        return true;
      });
    }
  }
}

asio::awaitable<std::shared_ptr<SmtpClient>> QueueManager::connect(const policy::Route& route,
                                                                   std::size_t route_index,
                                                                   const policy::Endpoint& host,
                                                                   ClientReply& error,
                                                                   bool allow_reuse,
                                                                   bool& reused) {
  reused = false;
  std::string key = host_key(route_index, host);
  asio::steady_timer pause(io_);
  while (true) {
    // An idle connection to this host first; else a new one within the per-host limit; else
    // wait for one of the two (a delivery finishing returns its connection to the pool).
    auto& idle = idle_[key];
    auto t = std::chrono::steady_clock::now();
    while (allow_reuse && !idle.empty()) {
      Idle i = std::move(idle.back());
      idle.pop_back();
      if (i.until > t && i.client->usable()) {
        reused = true;
        co_return i.client;
      }
      --open_[key];
      asio::co_spawn(io_, i.client->quit(), asio::detached);
    }
    if (open_[key] < route.max_connections) break;
    pause.expires_after(std::chrono::milliseconds(20));
    co_await pause.async_wait(kTuple);
  }
  ++open_[key];
  SmtpClient::Options opt;
  opt.helo = config_.server.hostname;
  opt.tls = route.tls;
  opt.server_name = route.tls_server_name;
  opt.tls_context = tls_[route_index].get();
  opt.timing = &config_.delivery;
  auto client = co_await SmtpClient::connect(io_.get_executor(), host, opt, error);
  if (!client) --open_[key];
  co_return client;
}

void QueueManager::release(const std::string& key, std::shared_ptr<SmtpClient> client) {
  if (running_ && client->usable()) {
    idle_[key].push_back({std::move(client), std::chrono::steady_clock::now() +
                                                 config_.delivery.idle_connection});
    return;
  }
  --open_[key];
  asio::co_spawn(io_, client->quit(), asio::detached);
}

asio::awaitable<void> QueueManager::deliver_route(const policy::Route& route,
                                                  std::size_t route_index,
                                                  const SpoolEnvelope& env,
                                                  const std::string& message,
                                                  const std::vector<std::size_t>& rcpts,
                                                  std::vector<ClientReply>& replies) {
  ClientReply error = ClientReply::local_failure(451, "451 4.4.1 no host of the route answered");
  for (const auto& host : route.hosts) {
    bool reused = false;
    auto client = co_await connect(route, route_index, host, error, true, reused);
    if (!client) {
      spdlog::info("qid={} event=connect_failed relay={} error={}", env.qid, host.to_string(),
                   kv(error.text));
      continue;  // fail over to the next host
    }
    replies = co_await client->send(env, message, rcpts);
    if (reused && client->lost_before_mail()) {
      // The backend closed the idle connection meanwhile: nothing was sent, so try once
      // more on a new one.
      release(host_key(route_index, host), std::move(client));
      client = co_await connect(route, route_index, host, error, false, reused);
      if (!client) continue;
      replies = co_await client->send(env, message, rcpts);
    }
    release(host_key(route_index, host), std::move(client));
    for (std::size_t i = 0; i < rcpts.size(); ++i)
      spdlog::info("qid={} event=delivery rcpt={} relay={} status={} reply={}", env.qid,
                   kv("<" + env.recipients[rcpts[i]].address + ">"), host.to_string(),
                   replies[i].positive() ? "sent" : replies[i].permanent() ? "bounced" : "deferred",
                   kv(replies[i].text));
    co_return;
  }
  replies.assign(rcpts.size(), error);
}

asio::awaitable<void> QueueManager::deliver(std::string state, std::string qid) {
  auto finish = [&] {
    known_.erase(qid);
    --in_flight_;
    wake();
  };
  auto msg = co_await offload(blocking_, [&] { return spool_.read(state, qid); });
  if (!msg) {
    // Gone (delivered meanwhile, or moved by `moat queue hold/delete`) or unreadable.
    bool gone = msg.error().message.find(std::strerror(ENOENT)) != std::string::npos;
    if (gone) spdlog::info("qid={} event=gone state={}", qid, state);
    else spdlog::error("qid={} event=queue_read_error error={}", qid, kv(msg.error().message));
    finish();
    co_return;
  }
  SpoolEnvelope env = msg->envelope;
  env.attempts += 1;

  // Group the pending recipients by route.
  std::map<const policy::Route*, std::vector<std::size_t>> groups;
  for (std::size_t i = 0; i < env.recipients.size(); ++i) {
    auto& r = env.recipients[i];
    if (r.state != State::Pending) continue;
    const policy::Route* route = config_.route_for(domain_of(r.address));
    if (!route) {
      // A configuration gap, not the sender's fault: keep the message until it is fixed.
      r.diagnostic = fmt::format("451 4.4.4 no [[route]] for domain {}", domain_of(r.address));
      env.last_error = r.diagnostic;
      continue;
    }
    groups[route].push_back(i);
  }
  std::vector<std::size_t> newly_failed;
  for (auto& [route, rcpts] : groups) {
    std::vector<ClientReply> replies;
    co_await deliver_route(*route, static_cast<std::size_t>(route - config_.routes.data()), env,
                           msg->message, rcpts, replies);
    for (std::size_t k = 0; k < rcpts.size(); ++k) {
      auto& r = env.recipients[rcpts[k]];
      r.diagnostic = replies[k].text;
      if (replies[k].positive()) {
        r.state = State::Delivered;
      } else if (replies[k].permanent()) {
        r.state = State::Failed;
        newly_failed.push_back(rcpts[k]);
      } else {
        env.last_error = replies[k].text;
      }
    }
  }

  std::int64_t now = now_s();
  bool expired = now - env.arrival >= config_.delivery.max_lifetime.count();
  bool pending = false;
  for (std::size_t i = 0; i < env.recipients.size(); ++i) {
    auto& r = env.recipients[i];
    if (r.state != State::Pending) continue;
    if (expired) {
      r.state = State::Failed;
      r.diagnostic = fmt::format("451 4.4.7 delivery time expired; last error: {}", r.diagnostic);
      newly_failed.push_back(i);
      spdlog::info("qid={} event=expired rcpt={}", qid, kv("<" + r.address + ">"));
    } else {
      pending = true;
    }
  }

  // Report failures before the record that would forget them is written.
  std::vector<std::size_t> report;
  for (std::size_t i : newly_failed)
    if (wants_failure_dsn(env, env.recipients[i])) report.push_back(i);
  if (!report.empty()) co_await bounce(env, msg->message, report);
  else if (!newly_failed.empty())
    spdlog::info("qid={} event=no_dsn reason={}", qid,
                 env.sender.empty() ? "null-sender" : "notify");

  if (!pending) {
    auto removed = co_await offload(blocking_, [&] { return spool_.remove(state, qid, false); });
    if (!removed) spdlog::error("qid={} event=queue_remove_error error={}", qid, kv(removed.error().message));
    else spdlog::info("qid={} event=removed attempts={}", qid, env.attempts);
    finish();
    co_return;
  }
  env.next_attempt = now + backoff(config_.delivery, env.attempts).count();
  auto updated = co_await offload(blocking_, [&] { return spool_.update(state, env, "deferred"); });
  if (!updated) {
    spdlog::error("qid={} event=queue_update_error error={}", qid, kv(updated.error().message));
    finish();
    co_return;
  }
  spdlog::info("qid={} event=deferred attempts={} next_attempt_in={}s last_error={}", qid,
               env.attempts, env.next_attempt - now, kv(env.last_error));
  finish();
  if (running_) schedule(env.next_attempt, "deferred", qid);
}

asio::awaitable<void> QueueManager::bounce(const SpoolEnvelope& env, const std::string& message,
                                           const std::vector<std::size_t>& failed) {
  std::string dsn_qid = spool_.new_qid();
  std::string text = make_failure_dsn(env, message, failed, config_.server.hostname, dsn_qid);
  SpoolEnvelope dsn;
  dsn.qid = dsn_qid;
  dsn.arrival = now_s();
  dsn.protocol = "local";
  dsn.sender = "";  // the null sender: a DSN is never answered by another DSN
  dsn.body = "8BITMIME";
  SpoolRecipient& to = dsn.recipients.emplace_back();
  to.address = env.sender;
  auto why = co_await offload(blocking_, [&]() -> std::string {
    auto file = spool_.create(dsn_qid);
    if (!file) return file.error().message;
    (*file)->write(text);
    auto done = spool_.commit(**file, dsn);
    return done ? std::string() : done.error().message;
  });
  if (!why.empty()) {
    // Not written: the caller will still record the failure. Log loudly; the DSN is lost but
    // the message's own fate is not.
    spdlog::error("qid={} event=dsn_error error={}", env.qid, kv(why));
    co_return;
  }
  spdlog::info("qid={} event=dsn dsn_qid={} to={} failed={}", env.qid, dsn_qid,
               kv("<" + env.sender + ">"), failed.size());
  enqueue(dsn_qid);
}

}  // namespace moat::gateway
