#include "scanners/external/scanner_check.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <optional>

namespace moat::scanners {
namespace {

// What every scanner of one run shares with the waiting check; outlives the check's frame when
// the session goes away while scanners are still under way.
struct Round {
  explicit Round(asio::any_io_executor ex, std::size_t n)
      : done(ex), outcomes(n), signals(n), remaining(n) {}
  asio::steady_timer done;
  std::vector<std::optional<ScanOutcome>> outcomes;
  std::vector<asio::cancellation_signal> signals;
  std::size_t remaining;
};

int rank(policy::Action a) {
  switch (a) {
    case policy::Action::Reject: return 4;
    case policy::Action::TempFail: return 3;
    case policy::Action::Quarantine: return 2;
    case policy::Action::Discard: return 1;
    default: return 0;
  }
}

}  // namespace

ScannerCheck::ScannerCheck(asio::any_io_executor ex,
                           const std::vector<policy::ScannerConfig>& scanners)
    : ex_(ex), zmq_(1) {
  for (const auto& s : scanners) clients_.push_back(std::make_unique<ScannerClient>(ex, zmq_, s));
}

ScannerCheck::~ScannerCheck() { clients_.clear(); }

Result<bool> ScannerCheck::start() {
  for (auto& c : clients_) {
    auto r = c->start();
    if (!r) return r;
    spdlog::info("event=scanner_listening scanner={} endpoint={} stages={} on_error={}",
                 c->config().name, c->config().endpoint, c->config().stages.size(),
                 c->config().on_error == policy::ScannerOnError::TempFail ? "tempfail"
                                                                          : "continue");
  }
  return true;
}

bool ScannerCheck::runs_at(policy::Stage stage) const {
  for (const auto& c : clients_)
    if (c->wants(stage)) return true;
  return false;
}

asio::awaitable<policy::Verdict> ScannerCheck::run(policy::Stage stage,
                                                   policy::MessageContext& ctx) {
  std::vector<ScannerClient*> asked;
  for (auto& c : clients_) {
    if (!c->wants(stage)) continue;
    if (stage == policy::Stage::EndOfData && ctx.message.size() > c->config().max_size) {
      spdlog::info("event=scanner_skipped scanner={} qid={} reason=max_size size={}",
                   c->config().name, ctx.qid, ctx.message.size());
      continue;
    }
    if (c->config().report_only) {
      auto req = make_request(ctx, stage, c->next_id(), true);
      auto frames = encode_request(req);
      if (!c->notify(frames))
        spdlog::info("event=scanner_event_not_sent scanner={} qid={}", c->config().name, ctx.qid);
      continue;
    }
    asked.push_back(c.get());
  }
  if (asked.empty()) co_return policy::Verdict::next();

  auto round = std::make_shared<Round>(ex_, asked.size());
  for (std::size_t i = 0; i < asked.size(); ++i) {
    std::string id = asked[i]->next_id();
    auto frames = encode_request(make_request(ctx, stage, id, false));
    asio::co_spawn(
        ex_, asked[i]->scan(std::move(frames), std::move(id)),
        asio::bind_cancellation_slot(
            round->signals[i].slot(), [round, i](std::exception_ptr e, ScanOutcome o) {
              if (e) {
                o = {};
                o.kind = ScanOutcome::Kind::Failed;
                o.error = "internal error";
              }
              round->outcomes[i] = std::move(o);
              if (--round->remaining == 0) round->done.cancel();
            }));
  }
  if (round->remaining > 0) {
    round->done.expires_at(std::chrono::steady_clock::time_point::max());
    auto waited = asio::experimental::as_tuple(asio::use_awaitable);
    (void)co_await round->done.async_wait(waited);
    if (round->remaining > 0) {
      // Our caller was cancelled (the session went away): stop every scanner still waiting.
      for (auto& s : round->signals) s.emit(asio::cancellation_type::terminal);
      co_return policy::Verdict::tempfail(451, "4.7.1", "Content scan interrupted");
    }
  }

  policy::Verdict verdict = policy::Verdict::next();
  for (std::size_t i = 0; i < asked.size(); ++i) {
    const auto& cfg = asked[i]->config();
    const auto& o = *round->outcomes[i];
    std::string prefix = "scanner." + cfg.name + ".";
    policy::Verdict v = policy::Verdict::next();
    if (o.kind != ScanOutcome::Kind::Ok) {
      spdlog::warn("event=scanner_failed scanner={} qid={} stage={} error=\"{}\" on_error={}",
                   cfg.name, ctx.qid, policy::to_string(stage), sanitize_reply_text(o.error),
                   cfg.on_error == policy::ScannerOnError::TempFail ? "tempfail" : "continue");
      ctx.add_finding(prefix + "error", 0, sanitize_reply_text(o.error));
      if (cfg.on_error == policy::ScannerOnError::TempFail)
        v = policy::Verdict::tempfail(451, "4.7.1",
                                      "Content scanner unavailable, try again later");
    } else {
      const auto& r = o.result;
      for (const auto& f : r.findings) ctx.add_finding(prefix + f.name, f.score, f.detail);
      for (const auto& h : r.headers) ctx.add_headers.push_back(h);
      for (const auto& why : r.dropped)
        spdlog::warn("event=scanner_reply_part_dropped scanner={} qid={} reason=\"{}\"", cfg.name,
                     ctx.qid, why);
      std::string text = r.reply;
      if (text.empty()) {
        text = "Message refused by content scanner " + cfg.name;
        if (!r.findings.empty()) text += ": " + r.findings.front().detail;
      }
      switch (r.action) {
        case PluginAction::None: break;
        case PluginAction::Reject: v = policy::Verdict::reject(554, "5.7.1", text); break;
        case PluginAction::TempFail: v = policy::Verdict::tempfail(451, "4.7.1", text); break;
        case PluginAction::Quarantine: v.action = policy::Action::Quarantine; break;
        case PluginAction::Discard: v.action = policy::Action::Discard; break;
      }
      spdlog::info("event=scanner_result scanner={} qid={} stage={} action={} findings={}",
                   cfg.name, ctx.qid, policy::to_string(stage), policy::to_string(v.action),
                   r.findings.size());
    }
    if (rank(v.action) > rank(verdict.action)) verdict = v;
  }
  co_return verdict;
}

}  // namespace moat::scanners
