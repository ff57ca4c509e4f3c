// Server: the listeners. Accepts connections, enforces the session limits (total and per client
// address, 421 4.7.0 past them) and runs one Session coroutine per connection.
#pragma once

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "gateway/smtp/session.hpp"
#include "policy/result.hpp"

namespace moat::gateway {

class Server {
 public:
  Server(asio::io_context& io, Services& services);

  // Binds every configured listener. Done before privileges are dropped.
  Result<bool> bind();
  void start();
  // Stops accepting; sessions under way finish on their own.
  void stop();
  std::size_t sessions() const { return active_; }

 private:
  struct Acceptor {
    asio::ip::tcp::acceptor acceptor;
    const policy::Listener* listener;
  };
  asio::awaitable<void> accept_loop(Acceptor& a);
  asio::awaitable<void> serve(asio::ip::tcp::socket socket, const policy::Listener& listener);

  asio::io_context& io_;
  Services& services_;
  std::vector<Acceptor> acceptors_;
  std::size_t active_ = 0;
  std::unordered_map<std::string, std::size_t> per_ip_;
  std::string sid_prefix_;
  std::uint64_t next_sid_ = 0;
};

}  // namespace moat::gateway
