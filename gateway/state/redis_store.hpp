// RedisStore: the StateStore in Redis ([state] backend = "redis"), so that several Moat nodes
// behind one MX share rate limits and greylisting. One pipelined connection per process, on
// the asio loop: commands are formatted and replies parsed by hiredis (redisFormatCommandArgv,
// redisReader); the socket is Moat's own. Token buckets are one Lua script (atomic, clocked
// by the Redis server's TIME so that nodes need not agree on the time).
// Every command has the [state] timeout. A timeout or connection error fails every command
// in flight, closes the connection and makes new commands fail at once for one second before
// a reconnect is tried: a dead Redis costs a session at most one timeout, never a hang.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "policy/config.hpp"
#include "policy/state_store.hpp"

namespace moat::gateway {

class RedisStore final : public policy::StateStore {
 public:
  RedisStore(asio::any_io_executor ex, policy::StateConfig config);
  ~RedisStore() override;

  asio::awaitable<Result<bool>> take(std::string key, double capacity,
                                     std::chrono::milliseconds period, double cost) override;
  asio::awaitable<Result<std::int64_t>> incr(std::string key, std::chrono::seconds ttl) override;
  asio::awaitable<Result<std::optional<std::string>>> get(std::string key) override;
  asio::awaitable<Result<bool>> set(std::string key, std::string value, std::chrono::seconds ttl,
                                    bool only_new) override;

  // A Redis reply, reduced to what Moat uses.
  struct Value {
    enum class Type { Nil, String, Integer, Status, Error, Array } type = Type::Nil;
    std::string str;
    long long integer = 0;
  };
  asio::awaitable<Result<Value>> command(std::vector<std::string> args);

 private:
  struct Pending;
  struct Connection;
  asio::awaitable<void> run(std::shared_ptr<Connection> conn);
  asio::awaitable<void> writer(std::shared_ptr<Connection> conn);
  void fail_all(const std::string& why);

  asio::any_io_executor ex_;
  policy::StateConfig config_;
  std::shared_ptr<Connection> conn_;  // the live connection, or null
  std::chrono::steady_clock::time_point down_until_{};
};

}  // namespace moat::gateway
