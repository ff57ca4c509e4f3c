#include "policy/state_store.hpp"

#include <algorithm>

namespace moat::policy {

MemoryStore::Entry* MemoryStore::find(const std::string& key) {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  if (it->second.expires <= now()) {
    map_.erase(it);
    return nullptr;
  }
  return &it->second;
}

MemoryStore::Entry& MemoryStore::insert(const std::string& key) {
  if (map_.size() >= kMaxKeys) {
    auto t = now();
    std::erase_if(map_, [&](const auto& kv) { return kv.second.expires <= t; });
    if (map_.size() >= kMaxKeys) map_.clear();
  }
  return map_[key];
}

asio::awaitable<Result<bool>> MemoryStore::take(std::string key, double capacity,
                                                std::chrono::milliseconds period, double cost) {
  auto t = now();
  Entry* e = find(key);
  if (!e) {
    e = &insert(key);
    e->tokens = capacity;
    e->stamp = t;
  }
  double per_ms = period.count() > 0 ? capacity / static_cast<double>(period.count()) : capacity;
  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(t - e->stamp).count();
  e->tokens = std::min(capacity, e->tokens + static_cast<double>(elapsed) * per_ms);
  e->stamp = t;
  // Kept until it would be full again: then it is the same as absent.
  e->expires = t + period + std::chrono::seconds(1);
  bool ok = e->tokens >= cost;
  if (ok) e->tokens -= cost;
  co_return ok;
}

asio::awaitable<Result<std::int64_t>> MemoryStore::incr(std::string key,
                                                        std::chrono::seconds ttl) {
  Entry* e = find(key);
  if (!e) e = &insert(key);
  e->expires = now() + ttl;
  e->value = std::to_string(++e->count);  // what get() reads, as from Redis
  co_return e->count;
}

asio::awaitable<Result<std::optional<std::string>>> MemoryStore::get(std::string key) {
  Entry* e = find(key);
  if (!e) co_return std::optional<std::string>();
  co_return std::optional<std::string>(e->value);
}

asio::awaitable<Result<bool>> MemoryStore::set(std::string key, std::string value,
                                               std::chrono::seconds ttl, bool only_new) {
  Entry* e = find(key);
  if (e && only_new) co_return false;
  if (!e) e = &insert(key);
  e->value = std::move(value);
  e->expires = now() + ttl;
  co_return true;
}

}  // namespace moat::policy
