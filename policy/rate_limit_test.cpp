#include "policy/rate_limit.hpp"

#include <doctest/doctest.h>

#include "policy/greylist.hpp"
#include "tests/run_sync.hpp"

namespace moat::policy {
namespace {

using namespace std::chrono_literals;
using testing::run_sync;

MessageContext context(std::string_view ip, std::string_view sender = "a@sender.test") {
  MessageContext ctx;
  ctx.session.sid = "t";
  ctx.session.client_ip = *IpAddress::parse(ip);
  ctx.session.helo = "Client.Example";
  ctx.envelope.sender = parse_path(std::string("<") + std::string(sender) + ">", false).path;
  return ctx;
}

Recipient recipient(std::string address) {
  Recipient r;
  r.address = std::move(address);
  return r;
}

LimitConfig limit(std::string name, LimitKey key, LimitCounts counts, double rate,
                  std::chrono::seconds per = 60s) {
  LimitConfig l;
  l.name = std::move(name);
  l.key = key;
  l.counts = counts;
  l.rate = l.burst = rate;
  l.per = per;
  return l;
}

// A store that always fails, for the on_error paths.
class BrokenStore final : public StateStore {
 public:
  asio::awaitable<Result<bool>> take(std::string, double, std::chrono::milliseconds, double) override {
    co_return Result<bool>::fail("connection refused");
  }
  asio::awaitable<Result<std::int64_t>> incr(std::string, std::chrono::seconds) override {
    co_return Result<std::int64_t>::fail("connection refused");
  }
  asio::awaitable<Result<std::optional<std::string>>> get(std::string) override {
    co_return Result<std::optional<std::string>>::fail("connection refused");
  }
  asio::awaitable<Result<bool>> set(std::string, std::string, std::chrono::seconds, bool) override {
    co_return Result<bool>::fail("connection refused");
  }
};

}  // namespace

TEST_CASE("a connection limit per client address refuses with 421 4.7.0, then refills") {
  MemoryStore store;
  RateLimitCheck check({limit("conn", LimitKey::ClientIp, LimitCounts::Connections, 3, 60s)},
                       store, StateConfig{});
  CHECK(check.runs_at(Stage::Connect));
  CHECK_FALSE(check.runs_at(Stage::RcptTo));
  auto ctx = context("192.0.2.1");
  for (int i = 0; i < 3; ++i) CHECK_FALSE(run_sync(check.run(Stage::Connect, ctx)).final());
  Verdict v = run_sync(check.run(Stage::Connect, ctx));
  CHECK(v.action == Action::TempFail);
  CHECK(v.reply.code == 421);
  CHECK(v.reply.enhanced == "4.7.0");
  CHECK(v.reply.text.find("'conn'") != std::string::npos);
  REQUIRE(ctx.findings.size() == 1);
  CHECK(ctx.findings[0].name == "limit.conn");
  CHECK(ctx.findings[0].detail == "192.0.2.1");
  // Another address has its own bucket.
  auto other = context("192.0.2.2");
  CHECK_FALSE(run_sync(check.run(Stage::Connect, other)).final());
  // A third of the period gives back one token (3 per 60 s).
  store.advance(20s);
  CHECK_FALSE(run_sync(check.run(Stage::Connect, ctx)).final());
  CHECK(run_sync(check.run(Stage::Connect, ctx)).final());
}

TEST_CASE("limits keyed on networks: one IPv4 /24 and one IPv6 /64 share a bucket") {
  MemoryStore store;
  RateLimitCheck check({limit("net", LimitKey::ClientNet, LimitCounts::Messages, 2)}, store,
                       StateConfig{});
  struct Row {
    const char* first;
    const char* second;
    bool shared;
  };
  for (Row row : {Row{"192.0.2.1", "192.0.2.200", true}, Row{"198.51.100.1", "198.51.101.1", false},
                  Row{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true},
                  Row{"2001:db8:1:3::1", "2001:db8:1:4::1", false}}) {
    CAPTURE(row.first);
    CAPTURE(row.second);
    auto a = context(row.first);
    auto b = context(row.second);
    CHECK_FALSE(run_sync(check.run(Stage::MailFrom, a)).final());
    CHECK_FALSE(run_sync(check.run(Stage::MailFrom, a)).final());
    Verdict v = run_sync(check.run(Stage::MailFrom, b));
    CHECK(v.final() == row.shared);
    if (v.final()) {
      CHECK(v.reply.code == 450);
      CHECK(v.reply.enhanced == "4.7.1");
    }
  }
  CHECK(RateLimitCheck::key_value(limit("n", LimitKey::ClientNet, LimitCounts::Messages, 1),
                                  context("2001:db8:1:2:3:4:5:6")) == "2001:db8:1:2::/64");
}

TEST_CASE("recipient limits per domain, with exemptions by network and by domain") {
  MemoryStore store;
  auto l = limit("rcpts", LimitKey::RcptDomain, LimitCounts::Recipients, 1);
  l.exempt_networks = {*Cidr::parse("10.0.0.0/8")};
  l.exempt_domains = {".vip.test"};
  RateLimitCheck check({l}, store, StateConfig{});
  auto ctx = context("192.0.2.1");
  Recipient a = recipient("x@Example.TEST"), b = recipient("y@example.test"),
            vip = recipient("z@sales.vip.test");
  ctx.current_rcpt = &a;
  CHECK_FALSE(run_sync(check.run(Stage::RcptTo, ctx)).final());
  ctx.current_rcpt = &b;
  CHECK(run_sync(check.run(Stage::RcptTo, ctx)).final());  // same domain, any case
  ctx.current_rcpt = &vip;
  for (int i = 0; i < 5; ++i) CHECK_FALSE(run_sync(check.run(Stage::RcptTo, ctx)).final());
  auto inside = context("10.1.2.3");
  inside.current_rcpt = &b;
  for (int i = 0; i < 5; ++i) CHECK_FALSE(run_sync(check.run(Stage::RcptTo, inside)).final());
}

TEST_CASE("a byte limit counts the message size at end of data") {
  MemoryStore store;
  RateLimitCheck check({limit("bytes", LimitKey::Sender, LimitCounts::Bytes, 1000, 3600s)}, store,
                       StateConfig{});
  auto ctx = context("192.0.2.1", "Big@Sender.test");
  ctx.message_size = 600;
  CHECK_FALSE(run_sync(check.run(Stage::EndOfData, ctx)).final());
  Verdict v = run_sync(check.run(Stage::EndOfData, ctx));
  CHECK(v.reply.code == 451);
  CHECK(ctx.findings.back().detail == "big@sender.test");
  auto small = context("192.0.2.1", "big@sender.test");
  small.message_size = 400;
  CHECK_FALSE(run_sync(check.run(Stage::EndOfData, small)).final());
}

TEST_CASE("a failing store allows by default and tempfails when configured") {
  BrokenStore broken;
  auto ctx = context("192.0.2.1");
  RateLimitCheck open({limit("c", LimitKey::ClientIp, LimitCounts::Connections, 1)}, broken,
                      StateConfig{});
  CHECK_FALSE(run_sync(open.run(Stage::Connect, ctx)).final());
  StateConfig closed_cfg;
  closed_cfg.fail_open = false;
  RateLimitCheck closed({limit("c", LimitKey::ClientIp, LimitCounts::Connections, 1)}, broken,
                        closed_cfg);
  Verdict v = run_sync(closed.run(Stage::Connect, ctx));
  CHECK(v.action == Action::TempFail);
  CHECK(v.reply.code == 451);
  CHECK(v.reply.enhanced == "4.3.0");

  GreylistConfig g;
  g.enabled = true;
  Recipient r = recipient("u@example.test");
  ctx.current_rcpt = &r;
  CHECK_FALSE(run_sync(GreylistCheck(g, broken, StateConfig{}).run(Stage::RcptTo, ctx)).final());
  CHECK(run_sync(GreylistCheck(g, broken, closed_cfg).run(Stage::RcptTo, ctx)).reply.code == 451);
}

TEST_CASE("greylisting: deferred, too early, passed, remembered, auto-allowlisted") {
  MemoryStore store;
  std::int64_t now = 1'000'000;
  GreylistConfig g;
  g.enabled = true;
  g.delay = 300s;
  g.retry_window = 3600s;
  g.auto_allowlist = 2;
  GreylistCheck check(g, store, StateConfig{}, [&] { return now; });
  auto ctx = context("192.0.2.10");
  Recipient r1 = recipient("u1@example.test"), r2 = recipient("u2@example.test"),
            r3 = recipient("u3@example.test");
  ctx.current_rcpt = &r1;
  Verdict v = run_sync(check.run(Stage::RcptTo, ctx));
  CHECK(v.reply.code == 451);
  CHECK(v.reply.enhanced == "4.7.1");
  CHECK(v.reply.text.find("300 seconds") != std::string::npos);
  CHECK(ctx.findings.back().name == "greylist.deferred");
  now += 100;
  v = run_sync(check.run(Stage::RcptTo, ctx));
  CHECK(v.reply.code == 451);
  CHECK(v.reply.text.find("200 seconds") != std::string::npos);
  // The retry comes from another host of the same /24: it counts.
  now += 250;
  auto farm = context("192.0.2.77");
  farm.current_rcpt = &r1;
  CHECK_FALSE(run_sync(check.run(Stage::RcptTo, farm)).final());
  now += 100000;  // long after retry_window: a passed triplet is remembered (pass_ttl)
  store.advance(100000s);
  CHECK_FALSE(run_sync(check.run(Stage::RcptTo, farm)).final());
  // A second passed triplet makes the network allowlisted: a third new one is not deferred.
  ctx.current_rcpt = &r2;
  CHECK(run_sync(check.run(Stage::RcptTo, ctx)).final());
  now += 400;
  CHECK_FALSE(run_sync(check.run(Stage::RcptTo, ctx)).final());
  ctx.current_rcpt = &r3;
  CHECK_FALSE(run_sync(check.run(Stage::RcptTo, ctx)).final());
  // Another network starts from scratch; a first attempt not retried in the window is forgotten.
  auto other = context("198.51.100.5");
  other.current_rcpt = &r3;
  CHECK(run_sync(check.run(Stage::RcptTo, other)).final());
  now += 4000;
  store.advance(4000s);
  v = run_sync(check.run(Stage::RcptTo, other));
  CHECK(v.reply.text.find("300 seconds") != std::string::npos);  // new again
}

TEST_CASE("greylisting exemptions: networks and sender or recipient domains") {
  MemoryStore store;
  GreylistConfig g;
  g.enabled = true;
  g.exempt_networks = {*Cidr::parse("2001:db8::/32")};
  g.exempt_domains = {"partner.test", ".internal.test"};
  GreylistCheck check(g, store, StateConfig{});
  Recipient r = recipient("u@example.test"), internal = recipient("u@a.internal.test");
  auto v6 = context("2001:db8::5");
  v6.current_rcpt = &r;
  CHECK_FALSE(run_sync(check.run(Stage::RcptTo, v6)).final());
  auto partner = context("192.0.2.1", "x@Partner.test");
  partner.current_rcpt = &r;
  CHECK_FALSE(run_sync(check.run(Stage::RcptTo, partner)).final());
  auto plain = context("192.0.2.1");
  plain.current_rcpt = &internal;
  CHECK_FALSE(run_sync(check.run(Stage::RcptTo, plain)).final());
  plain.current_rcpt = &r;
  CHECK(run_sync(check.run(Stage::RcptTo, plain)).final());
}

}  // namespace moat::policy
