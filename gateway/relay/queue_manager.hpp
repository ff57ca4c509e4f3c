// QueueManager: delivers what the spool holds to the internal MTA, never losing it.
// Messages in active/ are due now; messages in deferred/ at their envelope's next_attempt.
// One delivery groups a message's pending recipients by [[route]], tries the route's hosts in
// priority order (reusing idle connections), and records each recipient's outcome:
//   2xx → delivered; 5xx → failed, reported by DSN; 4xx or no connection → stays pending.
// Then the file is removed (every recipient final) or its envelope is updated and it moves to
// deferred/ with exponential backoff; past delivery.max_lifetime the pending recipients fail.
// Every change is written before the next step (at-least-once: a crash can only repeat).
#pragma once

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/ssl/context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/thread_pool.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "gateway/relay/smtp_client.hpp"
#include "gateway/spool/spool.hpp"
#include "policy/config.hpp"

namespace moat::gateway {

class QueueManager {
 public:
  QueueManager(asio::io_context& io, const policy::Config& config, Spool& spool,
               asio::thread_pool& blocking);

  // Loads active/ and deferred/ into the schedule and starts delivering.
  void start();
  // A new message was committed to active/.
  void enqueue(const std::string& qid);
  // Stops starting deliveries; those under way finish or are cut off by the process exit.
  void stop();
  std::size_t in_flight() const { return in_flight_; }

  // The wait after `attempts` failed attempts: retry_min doubling up to retry_max.
  static std::chrono::seconds backoff(const policy::DeliveryConfig& d, int attempts);

 private:
  struct Due {
    std::string state;
    std::string qid;
  };
  asio::awaitable<void> scheduler();
  asio::awaitable<void> deliver(std::string state, std::string qid);
  // Delivers env.recipients[rcpts] through `route`; fills `replies` (one per rcpt).
  asio::awaitable<void> deliver_route(const policy::Route& route, std::size_t route_index,
                                      const SpoolEnvelope& env, const std::string& message,
                                      const std::vector<std::size_t>& rcpts,
                                      std::vector<ClientReply>& replies);
  asio::awaitable<std::shared_ptr<SmtpClient>> connect(const policy::Route& route,
                                                       std::size_t route_index,
                                                       const policy::Endpoint& host,
                                                       ClientReply& error, bool allow_reuse,
                                                       bool& reused);
  void release(const std::string& key, std::shared_ptr<SmtpClient> client);
  asio::awaitable<void> bounce(const SpoolEnvelope& env, const std::string& message,
                               const std::vector<std::size_t>& failed);
  void schedule(std::int64_t due, std::string state, std::string qid);
  void wake();

  asio::io_context& io_;
  const policy::Config& config_;
  Spool& spool_;
  asio::thread_pool& blocking_;
  std::vector<std::unique_ptr<asio::ssl::context>> tls_;  // one client context per route
  std::multimap<std::int64_t, Due> due_;
  std::set<std::string> known_;  // qids scheduled or being delivered
  std::size_t in_flight_ = 0;
  bool running_ = false;
  asio::steady_timer wake_;
  std::chrono::steady_clock::time_point next_scan_{};  // of active/, for `moat queue` moves

  struct Idle {
    std::shared_ptr<SmtpClient> client;
    std::chrono::steady_clock::time_point until;
  };
  std::map<std::string, std::vector<Idle>> idle_;   // by route index + host
  std::map<std::string, std::size_t> open_;         // connections per host key
};

}  // namespace moat::gateway
