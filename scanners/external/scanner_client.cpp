#include "scanners/external/scanner_client.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <optional>

namespace moat::scanners {

struct ScannerClient::Pending {
  asio::steady_timer* timer;
  std::optional<ScanOutcome> outcome;
};

namespace {
constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);

ScanOutcome failed(std::string why) {
  ScanOutcome o;
  o.kind = ScanOutcome::Kind::Failed;
  o.error = std::move(why);
  return o;
}

// The request id in a reply we could not decode, so that the waiting request fails at once
// instead of at its deadline. Looks only for an "id=" line in the header frame.
std::string loose_id(const std::vector<std::string>& frames) {
  if (frames.size() < 2) return "";
  std::string_view h = frames[1];
  std::size_t start = 0;
  while (start < h.size()) {
    auto end = h.find('\n', start);
    if (end == std::string_view::npos) end = h.size();
    auto line = h.substr(start, end - start);
    if (line.substr(0, 3) == "id=") {
      line.remove_prefix(3);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      return std::string(line);
    }
    start = end + 1;
  }
  return "";
}
}  // namespace

ScannerClient::ScannerClient(asio::any_io_executor ex, zmq::context_t& zmq,
                             policy::ScannerConfig config)
    : ex_(ex), config_(std::move(config)), sock_(zmq, zmq::socket_type::dealer), fd_(ex) {
  sock_.set(zmq::sockopt::linger, 0);
  sock_.set(zmq::sockopt::maxmsgsize, kMaxReplySize);
  // Requests wait in the pipe of a connected instance only; with none, send fails at once.
  sock_.set(zmq::sockopt::sndhwm, 1000);
  sock_.set(zmq::sockopt::rcvhwm, 1000);
}

ScannerClient::~ScannerClient() {
  // The descriptor belongs to ZeroMQ: stop watching it without closing it.
  if (fd_.is_open()) {
    std::error_code ec;
    fd_.cancel(ec);
    (void)fd_.release();
  }
}

Result<bool> ScannerClient::start() {
  try {
    sock_.bind(config_.endpoint);
    int fd = sock_.get(zmq::sockopt::fd);
    fd_.assign(fd);
  } catch (const std::exception& e) {
    return Result<bool>::fail(
        fmt::format("scanner '{}': cannot bind {}: {}", config_.name, config_.endpoint, e.what()));
  }
  started_ = true;
  asio::co_spawn(ex_, reader(), asio::detached);
  return true;
}

bool ScannerClient::wants(policy::Stage stage) const {
  for (auto s : config_.stages)
    if (s == stage) return true;
  return false;
}

std::string ScannerClient::next_id() { return fmt::format("{}-{}", config_.name, ++next_id_); }

bool ScannerClient::breaker_open() const {
  return failures_ >= config_.breaker_failures &&
         (std::chrono::steady_clock::now() < open_until_ || shared_->probing);
}

void ScannerClient::record(bool ok) {
  if (ok) {
    if (failures_ >= config_.breaker_failures)
      spdlog::info("event=scanner_breaker_closed scanner={}", config_.name);
    failures_ = 0;
    return;
  }
  ++failures_;
  if (failures_ >= config_.breaker_failures) {
    open_until_ = std::chrono::steady_clock::now() + config_.breaker_cooldown;
    if (failures_ == config_.breaker_failures || shared_->probing)
      spdlog::warn("event=scanner_breaker_open scanner={} failures={} cooldown={}s", config_.name,
                   failures_, config_.breaker_cooldown.count());
  }
}

bool ScannerClient::send(const std::vector<std::string>& frames) {
  if (!started_) return false;
  try {
    // The empty delimiter lets a plugin use REP (PROTOCOL.md, "Frames").
    auto first = sock_.send(zmq::buffer(std::string_view{}),
                            zmq::send_flags::dontwait | zmq::send_flags::sndmore);
    if (!first) return false;  // EAGAIN: no instance connected (or all queues full)
    for (std::size_t i = 0; i < frames.size(); ++i) {
      auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      // After the first part, the rest of a multipart message is always accepted.
      (void)sock_.send(zmq::buffer(frames[i]), flags);
    }
  } catch (const zmq::error_t& e) {
    spdlog::warn("event=scanner_send_failed scanner={} error=\"{}\"", config_.name, e.what());
    drain();
    return false;
  }
  drain();  // a send may have consumed the descriptor's edge
  return true;
}

void ScannerClient::drain() {
  if (!started_) return;
  for (int budget = 0; budget < 10000; ++budget) {
    std::vector<zmq::message_t> parts;
    try {
      auto events = sock_.get(zmq::sockopt::events);
      if (!(events & ZMQ_POLLIN)) return;
      zmq::message_t part;
      while (true) {
        auto got = sock_.recv(part, zmq::recv_flags::dontwait);
        if (!got) break;
        parts.push_back(std::move(part));
        if (!parts.back().more()) break;
        part = zmq::message_t();
      }
    } catch (const zmq::error_t& e) {
      spdlog::warn("event=scanner_recv_failed scanner={} error=\"{}\"", config_.name, e.what());
      return;
    }
    if (!parts.empty()) dispatch(parts);
  }
}

void ScannerClient::dispatch(std::vector<zmq::message_t>& parts) {
  std::vector<std::string> frames;
  std::size_t i = 0;
  if (!parts.empty() && parts[0].size() == 0) i = 1;  // the delimiter REP puts back
  for (; i < parts.size(); ++i) frames.push_back(parts[i].to_string());
  auto decoded = decode(frames);
  std::string id = decoded ? decoded->id : loose_id(frames);
  auto it = shared_->pending.find(id);
  if (it == shared_->pending.end()) {
    spdlog::info("event=scanner_reply_dropped scanner={} reason=\"{}\"", config_.name,
                 decoded ? "late or unknown id" : sanitize_reply_text(decoded.error().message));
    return;
  }
  Pending* p = it->second;
  if (p->outcome) return;  // a second reply to the same id
  if (!decoded) {
    p->outcome = failed("malformed reply: " + sanitize_reply_text(decoded.error().message));
  } else if (decoded->type == "event") {
    return;
  } else {
    auto result = parse_result(*decoded);
    if (!result) {
      p->outcome = failed(result.error().message);
    } else {
      ScanOutcome o;
      o.kind = ScanOutcome::Kind::Ok;
      o.result = std::move(*result);
      p->outcome = std::move(o);
    }
  }
  p->timer->cancel();
}

asio::awaitable<void> ScannerClient::reader() {
  while (fd_.is_open()) {
    drain();
    auto [ec] = co_await fd_.async_wait(asio::posix::stream_descriptor::wait_read, kTuple);
    if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) co_return;
  }
}

bool ScannerClient::notify(const std::vector<std::string>& frames) { return send(frames); }

asio::awaitable<ScanOutcome> ScannerClient::scan(std::vector<std::string> frames, std::string id) {
  auto now = std::chrono::steady_clock::now();
  std::shared_ptr<Shared> shared = shared_;
  bool probe = false;
  if (failures_ >= config_.breaker_failures) {
    if (now < open_until_ || shared->probing) {
      ScanOutcome o = failed("circuit breaker open");
      co_return o;
    }
    shared->probing = probe = true;  // half-open: this request decides
  }
  asio::steady_timer timer(ex_);
  Pending pending{&timer, std::nullopt};
  shared->pending[id] = &pending;
  struct Forget {
    std::shared_ptr<Shared> shared;
    const std::string& id;
    bool probe;
    ~Forget() {
      shared->pending.erase(id);
      if (probe) shared->probing = false;
    }
  } forget{shared, id, probe};

  auto deadline = now + config_.timeout;
  if (!send(frames)) {
    record(false);
    ScanOutcome o = failed("no plugin instance connected");
    co_return o;
  }
  while (!pending.outcome) {
    now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    timer.expires_at(std::min(deadline, now + kPollInterval));
    (void)co_await timer.async_wait(kTuple);
    if (pending.outcome) break;
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) {
      ScanOutcome o;
      o.kind = ScanOutcome::Kind::Cancelled;
      o.error = "cancelled";
      co_return o;
    }
    drain();
  }
  ScanOutcome o = pending.outcome
                      ? std::move(*pending.outcome)
                      : failed(fmt::format("no reply within {}s", config_.timeout.count()));
  record(o.kind == ScanOutcome::Kind::Ok);
  co_return o;
}

}  // namespace moat::scanners
