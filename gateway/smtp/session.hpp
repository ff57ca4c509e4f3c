// Session: one SMTP connection, one coroutine that reads top to bottom (RFC 5321 with
// PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, DSN and STARTTLS).
// Each command is looked up in a declarative table (allowed states, allowed before TLS,
// pipelinable), validated, run through the policy pipeline for its stage, then applied.
// The session owns its socket, buffers and MessageContext; shared services come by reference.
#pragma once

#include <asio/ip/tcp.hpp>
#include <asio/awaitable.hpp>
#include <asio/ssl/context.hpp>
#include <asio/thread_pool.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "gateway/spool/spool.hpp"
#include "policy/config.hpp"
#include "policy/pipeline.hpp"

namespace moat::gateway {

// Clients that passed the pre-greet test recently, by address: not made to wait again.
class PregreetPassed {
 public:
  bool contains(const std::string& ip) {
    auto it = until_.find(ip);
    if (it == until_.end()) return false;
    if (it->second > std::chrono::steady_clock::now()) return true;
    until_.erase(it);
    return false;
  }
  void add(const std::string& ip, std::chrono::seconds ttl) {
    if (until_.size() >= 100000) until_.clear();  // bounded
    until_[ip] = std::chrono::steady_clock::now() + ttl;
  }

 private:
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> until_;
};

// Everything a session borrows; built once in main and outliving every session.
struct Services {
  const policy::Config& config;
  const policy::Pipeline& pipeline;
  Spool& spool;
  asio::ssl::context& tls;
  asio::thread_pool& blocking;  // for fsync and other calls that may block
  std::function<void(const std::string& qid)> queued = {};  // a message entered active/
  asio::ssl::context* proxy_tls = nullptr;  // client TLS for proxy listeners' backend
  PregreetPassed pregreet_passed = {};
};

// Runs the whole SMTP dialogue on `socket`, accepted by `listener` (queue or proxy mode), and
// returns when the connection is over. Never throws: an unexpected exception is logged with the
// session id and ends the session.
asio::awaitable<void> run_session(asio::ip::tcp::socket socket, Services& services,
                                  const policy::Listener& listener, std::string sid);

}  // namespace moat::gateway
