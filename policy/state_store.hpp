// StateStore: the shared state behind rate limits and greylisting. In memory by default (one
// node); RedisStore (gateway/state/) shares it between the nodes behind one MX.
// Every operation is atomic in the store and never throws; a failed or slow store is an Error
// value, and the check that asked applies [state] on_error (default: allow, logged loudly).
#pragma once

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>

#include "policy/result.hpp"

namespace moat::policy {

class StateStore {
 public:
  virtual ~StateStore() = default;

  // Token bucket `key`: holds up to `capacity` tokens, refilled at `capacity` per `period`.
  // Takes `cost` tokens when there are that many and answers true; else takes none, false.
  virtual asio::awaitable<Result<bool>> take(std::string key, double capacity,
                                             std::chrono::milliseconds period, double cost) = 0;
  // Adds 1 to counter `key` (created at 0) and (re)sets its lifetime; the new value.
  virtual asio::awaitable<Result<std::int64_t>> incr(std::string key,
                                                     std::chrono::seconds ttl) = 0;
  // The value of `key`, nullopt when absent or expired.
  virtual asio::awaitable<Result<std::optional<std::string>>> get(std::string key) = 0;
  // Sets `key` to `value` for `ttl`; with only_new, only when absent (true if it was set).
  virtual asio::awaitable<Result<bool>> set(std::string key, std::string value,
                                            std::chrono::seconds ttl, bool only_new = false) = 0;
};

// One process's state, on the event-loop thread. Bounded: past kMaxKeys entries, expired ones
// are dropped, then everything (limits start afresh rather than memory growing without end).
class MemoryStore final : public StateStore {
 public:
  static constexpr std::size_t kMaxKeys = 1'000'000;
  using Clock = std::chrono::steady_clock;

  asio::awaitable<Result<bool>> take(std::string key, double capacity,
                                     std::chrono::milliseconds period, double cost) override;
  asio::awaitable<Result<std::int64_t>> incr(std::string key, std::chrono::seconds ttl) override;
  asio::awaitable<Result<std::optional<std::string>>> get(std::string key) override;
  asio::awaitable<Result<bool>> set(std::string key, std::string value, std::chrono::seconds ttl,
                                    bool only_new) override;

  // For tests: pretend this much time has passed.
  void advance(std::chrono::milliseconds d) { offset_ += d; }

 private:
  struct Entry {
    double tokens = 0;
    std::int64_t count = 0;
    std::string value;
    Clock::time_point stamp;    // buckets: last refill
    Clock::time_point expires;
  };
  Clock::time_point now() const { return Clock::now() + offset_; }
  Entry* find(const std::string& key);
  Entry& insert(const std::string& key);

  std::unordered_map<std::string, Entry> map_;
  std::chrono::milliseconds offset_{0};
};

}  // namespace moat::policy
