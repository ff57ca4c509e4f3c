// ScannerClient: the gateway's side of one [[scanner]] (plugins/PROTOCOL.md). It binds a ZeroMQ
// DEALER socket at the configured endpoint; plugin instances connect to it and share requests
// round robin.
//
// Event loop integration: the socket lives on the gateway's single io_context thread and is
// never called in blocking mode. Its ZMQ_FD is watched with an asio stream_descriptor; since
// that descriptor is edge-triggered and any send or receive may consume the edge, the client
// drains (ZMQ_EVENTS + ZMQ_DONTWAIT) after every send and every wake-up, and a waiting request
// also re-checks ZMQ_EVENTS every kPollInterval, so that a lost edge costs at most that much
// latency and never a hang. A dedicated ZeroMQ thread would need a second queue and a hand-off
// per message for no gain on one event-loop thread.
//
// Failure handling: a deadline per request (config timeout); a circuit breaker that, after
// breaker_failures failures in a row, answers "open" without calling for breaker_cooldown, then
// lets one request through to probe.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>
#include <zmq.hpp>

#include "policy/config.hpp"
#include "policy/result.hpp"
#include "scanners/external/protocol.hpp"

namespace moat::scanners {

struct ScanOutcome {
  enum class Kind { Ok, Failed, Skipped, Cancelled };
  Kind kind = Kind::Failed;
  ScanResult result;   // Kind::Ok
  std::string error;   // Kind::Failed: why (for logs and the finding's detail)
};

class ScannerClient {
 public:
  static constexpr std::chrono::milliseconds kPollInterval{100};
  static constexpr std::int64_t kMaxReplySize = 1 << 20;

  ScannerClient(asio::any_io_executor ex, zmq::context_t& zmq, policy::ScannerConfig config);
  ~ScannerClient();
  ScannerClient(const ScannerClient&) = delete;
  ScannerClient& operator=(const ScannerClient&) = delete;

  // Binds the endpoint and starts reading replies. An error names the endpoint and the reason.
  Result<bool> start();

  const policy::ScannerConfig& config() const { return config_; }
  bool wants(policy::Stage stage) const;

  // One scan request (frames after the delimiter, as encode_request makes them, whose `id`
  // field is `id`). Completes by the deadline at the latest; never throws for a plugin's fault.
  // Counts success/failure in the circuit breaker; while the breaker is open answers Failed at
  // once. Cancellation (the awaiting operation's cancellation slot) answers Cancelled.
  asio::awaitable<ScanOutcome> scan(std::vector<std::string> frames, std::string id);
  // A report-only event: sent if a plugin is connected, no reply awaited. False if not sent.
  bool notify(const std::vector<std::string>& frames);

  // A fresh request id ("<name>-<n>").
  std::string next_id();
  bool breaker_open() const;
  std::uint64_t consecutive_failures() const { return failures_; }

 private:
  struct Pending;
  bool send(const std::vector<std::string>& frames);
  void drain();
  void dispatch(std::vector<zmq::message_t>& parts);
  asio::awaitable<void> reader();
  void record(bool ok);

  asio::any_io_executor ex_;
  policy::ScannerConfig config_;
  zmq::socket_t sock_;
  asio::posix::stream_descriptor fd_;
  bool started_ = false;
  std::uint64_t next_id_ = 0;
  // What a request's coroutine frame touches when it ends, shared so that a frame destroyed
  // after the client (io_context torn down with scans under way) touches live memory.
  struct Shared {
    std::unordered_map<std::string, Pending*> pending;
    bool probing = false;  // half-open: one request is under way
  };
  std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();
  std::uint64_t failures_ = 0;
  std::chrono::steady_clock::time_point open_until_{};
};

}  // namespace moat::scanners
