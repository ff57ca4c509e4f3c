#include "gateway/state/redis_store.hpp"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <charconv>

#include "gateway/log.hpp"

namespace moat::gateway {
namespace {

constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);
using Clock = std::chrono::steady_clock;

// Token bucket: KEYS[1]; ARGV = capacity, period (ms), cost. Answers 1 (taken) or 0.
constexpr const char* kTakeScript = R"lua(
local cap = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then tokens = cap; ts = now end
tokens = math.min(cap, tokens + math.max(0, now - ts) * cap / period)
local ok = 0
if tokens >= cost then tokens = tokens - cost; ok = 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.floor(period) + 1000)
return ok
)lua";

constexpr const char* kIncrScript = R"lua(
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
)lua";

RedisStore::Value convert(const redisReply* r) {
  RedisStore::Value v;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      v.type = RedisStore::Value::Type::String;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      v.type = RedisStore::Value::Type::Status;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      v.type = RedisStore::Value::Type::Error;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      v.type = RedisStore::Value::Type::Integer;
      v.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      v.type = RedisStore::Value::Type::Array;
      break;
    default:
      break;
  }
  return v;
}

}  // namespace

struct RedisStore::Pending {
  explicit Pending(asio::any_io_executor ex) : wake(std::move(ex)) {}
  asio::steady_timer wake;
  std::optional<Result<Value>> result;
};

struct RedisStore::Connection {
  explicit Connection(asio::any_io_executor ex) : sock(ex), more(ex) {
    more.expires_at(Clock::time_point::max());
  }
  ~Connection() {
    if (reader) redisReaderFree(reader);
  }
  asio::ip::tcp::socket sock;
  asio::steady_timer more;  // wakes the writer
  std::string out;          // formatted commands not yet written
  std::deque<std::shared_ptr<Pending>> pending;  // in the order their replies will come
  redisReader* reader = redisReaderCreate();
  bool connected = false;
  bool closed = false;
};

RedisStore::RedisStore(asio::any_io_executor ex, policy::StateConfig config)
    : ex_(std::move(ex)), config_(std::move(config)) {}

RedisStore::~RedisStore() { fail_all("shutting down"); }

void RedisStore::fail_all(const std::string& why) {
  if (!conn_) return;
  auto conn = std::move(conn_);
  conn->closed = true;
  for (auto& p : conn->pending) {
    p->result = Result<Value>::fail(why);
    p->wake.cancel();
  }
  conn->pending.clear();
  std::error_code ec;
  conn->sock.close(ec);
  conn->more.cancel();
  down_until_ = Clock::now() + std::chrono::seconds(1);
  spdlog::error("event=redis_error redis={} error={}", config_.redis_address.to_string(), kv(why));
}

asio::awaitable<void> RedisStore::writer(std::shared_ptr<Connection> conn) {
  while (!conn->closed) {
    if (conn->out.empty() || !conn->connected) {
      conn->more.expires_at(Clock::time_point::max());
      co_await conn->more.async_wait(kTuple);
      continue;
    }
    std::string data = std::move(conn->out);
    conn->out.clear();
    auto [ec, n] = co_await asio::async_write(conn->sock, asio::buffer(data), kTuple);
    if (ec && !conn->closed && conn == conn_) fail_all("write: " + ec.message());
  }
}

asio::awaitable<void> RedisStore::run(std::shared_ptr<Connection> conn) {
  std::error_code ec;
  auto addr = asio::ip::make_address(config_.redis_address.host, ec);
  if (!ec) std::tie(ec) = co_await conn->sock.async_connect({addr, config_.redis_address.port}, kTuple);
  if (conn->closed) co_return;  // timed out meanwhile
  if (ec) {
    if (conn == conn_) fail_all("connect: " + ec.message());
    co_return;
  }
  conn->connected = true;
  conn->more.cancel();
  asio::co_spawn(ex_, writer(conn), asio::detached);
  char buf[8192];
  while (!conn->closed) {
    auto [rec, n] = co_await conn->sock.async_read_some(asio::buffer(buf), kTuple);
    if (conn->closed) co_return;
    if (rec) {
      if (conn == conn_) fail_all("read: " + rec.message());
      co_return;
    }
    if (redisReaderFeed(conn->reader, buf, n) != REDIS_OK) {
      if (conn == conn_) fail_all("protocol error");
      co_return;
    }
    while (true) {
      void* reply = nullptr;
      if (redisReaderGetReply(conn->reader, &reply) != REDIS_OK) {
        if (conn == conn_) fail_all("protocol error");
        co_return;
      }
      if (!reply) break;
      Value v = convert(static_cast<redisReply*>(reply));
      freeReplyObject(reply);
      if (conn->pending.empty()) {
        if (conn == conn_) fail_all("reply without a command");
        co_return;
      }
      auto p = std::move(conn->pending.front());
      conn->pending.pop_front();
      p->result = std::move(v);
      p->wake.cancel();
    }
  }
}

asio::awaitable<Result<RedisStore::Value>> RedisStore::command(std::vector<std::string> args) {
  if (!conn_ && Clock::now() < down_until_)
    co_return Result<Value>::fail("redis unavailable (retrying in a moment)");
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  char* formatted = nullptr;
  int len = redisFormatCommandArgv(&formatted, static_cast<int>(argv.size()), argv.data(),
                                   lens.data());
  if (len < 0) co_return Result<Value>::fail("cannot format command");
  if (!conn_) {
    conn_ = std::make_shared<Connection>(ex_);
    asio::co_spawn(ex_, run(conn_), asio::detached);
  }
  auto conn = conn_;
  conn->out.append(formatted, static_cast<std::size_t>(len));
  redisFreeCommand(formatted);
  auto p = std::make_shared<Pending>(ex_);
  conn->pending.push_back(p);
  conn->more.cancel();
  p->wake.expires_after(config_.timeout);
  co_await p->wake.async_wait(kTuple);
  if (!p->result) {
    // No reply in time: the replies still owed can no longer be matched up. Start over.
    if (conn == conn_) fail_all("timeout");
    if (!p->result) p->result = Result<Value>::fail("timeout");
  }
  Result<Value> r = std::move(*p->result);
  if (r && r->type == Value::Type::Error) co_return Result<Value>::fail("redis: " + r->str);
  co_return r;
}

asio::awaitable<Result<bool>> RedisStore::take(std::string key, double capacity,
                                               std::chrono::milliseconds period, double cost) {
  // Arguments built first: GCC 12 mishandles temporaries inside co_await expressions.
  std::vector<std::string> args = {"EVAL", kTakeScript, "1", key, fmt::format("{}", capacity),
                                   std::to_string(std::max<long long>(period.count(), 1)),
                                   fmt::format("{}", cost)};
  auto r = co_await command(std::move(args));
  if (!r) co_return Result<bool>::fail(r.error().message);
  if (r->type != Value::Type::Integer) co_return Result<bool>::fail("unexpected reply");
  co_return r->integer == 1;
}

asio::awaitable<Result<std::int64_t>> RedisStore::incr(std::string key, std::chrono::seconds ttl) {
  std::vector<std::string> args = {"EVAL", kIncrScript, "1", key, std::to_string(ttl.count())};
  auto r = co_await command(std::move(args));
  if (!r) co_return Result<std::int64_t>::fail(r.error().message);
  if (r->type != Value::Type::Integer) co_return Result<std::int64_t>::fail("unexpected reply");
  co_return static_cast<std::int64_t>(r->integer);
}

asio::awaitable<Result<std::optional<std::string>>> RedisStore::get(std::string key) {
  std::vector<std::string> args = {"GET", key};
  auto r = co_await command(std::move(args));
  if (!r) co_return Result<std::optional<std::string>>::fail(r.error().message);
  if (r->type == Value::Type::Nil) co_return std::optional<std::string>();
  if (r->type != Value::Type::String)
    co_return Result<std::optional<std::string>>::fail("unexpected reply");
  co_return std::optional<std::string>(r->str);
}

asio::awaitable<Result<bool>> RedisStore::set(std::string key, std::string value,
                                              std::chrono::seconds ttl, bool only_new) {
  std::vector<std::string> args = {"SET", key, value, "EX", std::to_string(ttl.count())};
  if (only_new) args.push_back("NX");
  auto r = co_await command(std::move(args));
  if (!r) co_return Result<bool>::fail(r.error().message);
  co_return r->type == Value::Type::Status;  // "OK"; nil when NX found the key
}

}  // namespace moat::gateway
