// ScannerCheck against in-process fake plugins (a REP socket on a thread, ipc:// in a temp dir).
#include "scanners/external/scanner_check.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>
#include <zmq_addon.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>
#include <atomic>
#include <filesystem>
#include <functional>
#include <thread>

using namespace moat;
using namespace moat::scanners;
using Clock = std::chrono::steady_clock;

namespace {

std::string temp_endpoint(const std::string& tag) {
  static int n = 0;
  auto dir = std::filesystem::temp_directory_path();
  return fmt::format("ipc://{}/moat-scan-test-{}-{}-{}", dir.string(), getpid(), tag, ++n);
}

// A plugin on its own thread: answers each request with handler(request frames) until stopped.
// The handler returns the reply frames (without delimiter) or nothing to stay silent.
class FakePlugin {
 public:
  using Handler = std::function<std::optional<std::vector<std::string>>(const Decoded&)>;
  FakePlugin(zmq::context_t& ctx, const std::string& endpoint, Handler h)
      : sock_(ctx, zmq::socket_type::router), handler_(std::move(h)) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::rcvtimeo, 50);
    sock_.connect(endpoint);
    thread_ = std::thread([this] { loop(); });
  }
  ~FakePlugin() {
    stop_ = true;
    thread_.join();
  }
  int served() const { return served_; }

 private:
  void loop() {
    while (!stop_) {
      std::vector<zmq::message_t> parts;
      auto n = zmq::recv_multipart(sock_, std::back_inserter(parts));
      if (!n || parts.size() < 3) continue;
      std::vector<std::string> frames;
      for (std::size_t i = 2; i < parts.size(); ++i) frames.push_back(parts[i].to_string());
      auto d = decode(frames);
      ++served_;
      if (!d) continue;
      auto reply = handler_(*d);
      if (!reply) continue;
      std::vector<zmq::message_t> out;
      out.emplace_back(parts[0].to_string());
      out.emplace_back();
      for (auto& f : *reply) out.emplace_back(f);
      (void)zmq::send_multipart(sock_, out);
    }
  }
  zmq::socket_t sock_;
  Handler handler_;
  std::atomic<bool> stop_{false};
  std::atomic<int> served_{0};
  std::thread thread_;
};

policy::ScannerConfig scanner(const std::string& name, const std::string& endpoint) {
  policy::ScannerConfig c;
  c.name = name;
  c.endpoint = endpoint;
  c.timeout = std::chrono::seconds(1);
  return c;
}

policy::MessageContext message(std::string body = "Subject: t\r\n\r\nhello\r\n") {
  policy::MessageContext ctx;
  ctx.qid = "Q1";
  ctx.session.sid = "S1";
  ctx.message = std::move(body);
  return ctx;
}

policy::Verdict run(asio::io_context& io, ScannerCheck& check, policy::MessageContext& ctx) {
  auto fut = asio::co_spawn(io, check.run(policy::Stage::EndOfData, ctx), asio::use_future);
  // The client's reader keeps the io_context busy forever: run until the check is done.
  io.restart();
  auto give_up = Clock::now() + std::chrono::seconds(10);
  while (fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready &&
         Clock::now() < give_up)
    io.run_one_for(std::chrono::milliseconds(10));
  return fut.get();
}

ScanResult result_for(const Decoded& d) {
  ScanResult r;
  r.id = d.id;
  return r;
}

// Waits (up to 2 s) until a connecting plugin is attached: sending before that fails at once.
void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(150)); }

bool has_finding(const policy::MessageContext& ctx, const std::string& name) {
  for (const auto& f : ctx.findings)
    if (f.name == name) return true;
  return false;
}

}  // namespace

TEST_CASE("scanner check: a reject with findings and headers") {
  asio::io_context io;
  auto ep = temp_endpoint("reject");
  ScannerCheck check(io.get_executor(), {scanner("av", ep)});
  REQUIRE(check.start().ok());
  zmq::context_t zctx;
  FakePlugin plugin(zctx, ep, [](const Decoded& d) -> std::optional<std::vector<std::string>> {
    auto req = parse_request(d);
    auto r = result_for(d);
    if (req && req->message.find("EICAR") != std::string::npos) {
      r.action = PluginAction::Reject;
      r.reply = "Virus found: Eicar-Test-Signature";
      r.findings = {{"av.Eicar-Test-Signature", 20, "Eicar-Test-Signature"}};
    }
    r.headers = {{"X-Scanned", "fake"}, {"Bad Name", "x"}};
    return encode_result(r);
  });
  settle();
  auto ctx = message("Subject: v\r\n\r\nEICAR\r\n");
  auto v = run(io, check, ctx);
  CHECK(v.action == policy::Action::Reject);
  CHECK(v.reply.code == 554);
  CHECK(v.reply.enhanced == "5.7.1");
  CHECK(v.reply.text == "Virus found: Eicar-Test-Signature");
  CHECK(has_finding(ctx, "scanner.av.av.eicar-test-signature"));
  REQUIRE(ctx.add_headers.size() == 1);
  CHECK(ctx.add_headers[0].first == "X-Scanned");

  auto clean = message();
  auto v2 = run(io, check, clean);
  CHECK(v2.action == policy::Action::Continue);
  CHECK(clean.findings.empty());
}

TEST_CASE("scanner check: silence, garbage and no plugin follow on_error") {
  struct Case {
    std::string what;
    policy::ScannerOnError on_error;
    int plugin;  // 0 none, 1 silent, 2 garbage with id, 3 unknown action, 4 error reply
    policy::Action expect;
    double max_seconds;
  };
  const Case cases[] = {
      {"no plugin, tempfail", policy::ScannerOnError::TempFail, 0, policy::Action::TempFail, 0.5},
      {"no plugin, continue", policy::ScannerOnError::Continue, 0, policy::Action::Continue, 0.5},
      {"silent, tempfail", policy::ScannerOnError::TempFail, 1, policy::Action::TempFail, 1.6},
      {"silent, continue", policy::ScannerOnError::Continue, 1, policy::Action::Continue, 1.6},
      {"garbage", policy::ScannerOnError::TempFail, 2, policy::Action::TempFail, 0.5},
      {"bad action", policy::ScannerOnError::TempFail, 3, policy::Action::TempFail, 0.5},
      {"error reply", policy::ScannerOnError::TempFail, 4, policy::Action::TempFail, 0.5},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    asio::io_context io;
    auto ep = temp_endpoint("err");
    auto cfg = scanner("av", ep);
    cfg.on_error = c.on_error;
    ScannerCheck check(io.get_executor(), {cfg});
    REQUIRE(check.start().ok());
    zmq::context_t zctx;
    std::optional<FakePlugin> plugin;
    int kind = c.plugin;
    if (kind)
      plugin.emplace(zctx, ep, [kind](const Decoded& d) -> std::optional<std::vector<std::string>> {
        if (kind == 1) return std::nullopt;
        if (kind == 2) return std::vector<std::string>{"MOAT/1", "id=" + d.id + "\n\x01garbage"};
        if (kind == 3) return std::vector<std::string>{"MOAT/1", "type=result\nid=" + d.id +
                                                                     "\naction=explode\n"};
        return encode_error(d.id, "cannot scan");
      });
    settle();
    auto ctx = message();
    auto t0 = Clock::now();
    auto v = run(io, check, ctx);
    double took = std::chrono::duration<double>(Clock::now() - t0).count();
    CHECK(v.action == c.expect);
    if (c.expect == policy::Action::TempFail) CHECK(v.reply.code == 451);
    CHECK(has_finding(ctx, "scanner.av.error"));
    CHECK(took < c.max_seconds);
  }
}

TEST_CASE("scanner check: scanners run in parallel, each with its own deadline") {
  asio::io_context io;
  auto ep1 = temp_endpoint("p1"), ep2 = temp_endpoint("p2");
  auto slow = [](const Decoded& d) -> std::optional<std::vector<std::string>> {
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    auto r = result_for(d);
    r.findings = {{"slow", 1, ""}};
    return encode_result(r);
  };
  ScannerCheck check(io.get_executor(), {scanner("one", ep1), scanner("two", ep2)});
  REQUIRE(check.start().ok());
  zmq::context_t zctx;
  FakePlugin p1(zctx, ep1, slow), p2(zctx, ep2, slow);
  settle();
  auto ctx = message();
  auto t0 = Clock::now();
  auto v = run(io, check, ctx);
  double took = std::chrono::duration<double>(Clock::now() - t0).count();
  CHECK(v.action == policy::Action::Continue);
  CHECK(has_finding(ctx, "scanner.one.slow"));
  CHECK(has_finding(ctx, "scanner.two.slow"));
  CHECK(took < 1.1);  // in sequence it would be 1.2 s
}

TEST_CASE("scanner check: the circuit breaker opens, skips, and closes after a good probe") {
  asio::io_context io;
  auto ep = temp_endpoint("breaker");
  auto cfg = scanner("av", ep);
  cfg.breaker_failures = 2;
  cfg.breaker_cooldown = std::chrono::seconds(1);
  ScannerCheck check(io.get_executor(), {cfg});
  REQUIRE(check.start().ok());
  for (int i = 0; i < 2; ++i) {  // no plugin: two quick failures
    auto ctx = message();
    CHECK(run(io, check, ctx).action == policy::Action::TempFail);
  }
  CHECK(check.client(0).breaker_open());
  zmq::context_t zctx;
  FakePlugin plugin(zctx, ep, [](const Decoded& d) -> std::optional<std::vector<std::string>> {
    return encode_result(result_for(d));
  });
  settle();
  auto ctx = message();
  CHECK(run(io, check, ctx).action == policy::Action::TempFail);  // still open: not asked
  CHECK(plugin.served() == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  auto ctx2 = message();
  CHECK(run(io, check, ctx2).action == policy::Action::Continue);  // the probe succeeds
  CHECK(plugin.served() == 1);
  CHECK_FALSE(check.client(0).breaker_open());
  CHECK(check.client(0).consecutive_failures() == 0);
}

TEST_CASE("scanner check: max_size skips, stages select, a bad endpoint fails to start") {
  asio::io_context io;
  auto cfg = scanner("av", temp_endpoint("size"));
  cfg.max_size = 10;
  ScannerCheck check(io.get_executor(), {cfg});
  REQUIRE(check.start().ok());
  CHECK(check.runs_at(policy::Stage::EndOfData));
  CHECK_FALSE(check.runs_at(policy::Stage::RcptTo));
  auto ctx = message(std::string(100, 'x'));
  CHECK(run(io, check, ctx).action == policy::Action::Continue);  // not asked, no failure
  CHECK(ctx.findings.empty());

  ScannerCheck bad(io.get_executor(), {scanner("av", "tcp://192.0.2.1:notaport")});
  auto r = bad.start();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("cannot bind") != std::string::npos);
}
