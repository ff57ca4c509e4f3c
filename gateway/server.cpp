#include "gateway/server.hpp"

#include <fmt/format.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <chrono>

#include "gateway/log.hpp"

namespace moat::gateway {

using asio::ip::tcp;

Server::Server(asio::io_context& io, Services& services)
    : io_(io),
      services_(services),
      // Session ids: start time in hex, then a counter, so they stay unique across restarts.
      sid_prefix_(fmt::format("{:x}", std::chrono::duration_cast<std::chrono::seconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count())) {}

Result<bool> Server::bind() {
  for (const auto& listener : services_.config.server.listen) {
    const auto& ep = listener.address;
    std::error_code ec;
    auto addr = asio::ip::make_address(ep.host, ec);
    if (ec) return Result<bool>::fail(fmt::format("listen {}: {}", ep.to_string(), ec.message()));
    tcp::endpoint endpoint(addr, ep.port);
    tcp::acceptor acceptor(io_);
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec && addr.is_v6()) acceptor.set_option(asio::ip::v6_only(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Result<bool>::fail(fmt::format("listen {}: {}", ep.to_string(), ec.message()));
    acceptors_.push_back({std::move(acceptor), &listener});
  }
  return true;
}

void Server::start() {
  for (auto& a : acceptors_) asio::co_spawn(io_, accept_loop(a), asio::detached);
}

void Server::stop() {
  for (auto& a : acceptors_) {
    std::error_code ec;
    a.acceptor.close(ec);
  }
}

asio::awaitable<void> Server::accept_loop(Acceptor& a) {
  tcp::acceptor& acceptor = a.acceptor;
  while (acceptor.is_open()) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::experimental::as_tuple(asio::use_awaitable));
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      // EMFILE and friends: log, breathe, go on; never spin.
      spdlog::warn("event=accept_error error={}", kv(ec.message()));
      asio::steady_timer pause(io_, std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
      continue;
    }
    asio::co_spawn(io_, serve(std::move(socket), *a.listener), asio::detached);
  }
}

asio::awaitable<void> Server::serve(tcp::socket socket, const policy::Listener& listener) {
  std::string sid = fmt::format("{}.{}", sid_prefix_, ++next_sid_);
  std::error_code ec;
  auto remote = socket.remote_endpoint(ec);
  if (ec) co_return;
  auto ip = policy::IpAddress::parse(remote.address().to_string());
  std::string key = ip ? ip->to_string() : remote.address().to_string();
  const auto& cfg = services_.config.server;
  std::string_view refusal;
  if (active_ >= cfg.max_sessions) refusal = "Error: too many connections";
  else if (per_ip_[key] >= cfg.max_sessions_per_ip)
    refusal = "Error: too many connections from your address";
  if (!refusal.empty()) {
    spdlog::info("sid={} qid=- event=refused_connection client={} reason={}", sid, key,
                 kv(refusal));
    std::string reply = fmt::format("421 4.7.0 {} {}\r\n", cfg.hostname, refusal);
    co_await asio::async_write(socket, asio::buffer(reply), asio::experimental::as_tuple(asio::use_awaitable));
    if (per_ip_[key] == 0) per_ip_.erase(key);
    co_return;
  }
  ++active_;
  ++per_ip_[key];
  co_await run_session(std::move(socket), services_, listener, sid);
  --active_;
  if (--per_ip_[key] == 0) per_ip_.erase(key);
}

}  // namespace moat::gateway
