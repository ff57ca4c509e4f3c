// Tests for policy/pipeline.hpp and policy/decider.hpp: the chain runner (first final verdict
// wins, Accept ends the stage, a throwing check fails safe, relay first at RCPT) and the
// score thresholds that turn findings into a verdict.
#include "policy/pipeline.hpp"

#include <doctest/doctest.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "policy/address.hpp"
#include "policy/config.hpp"
#include "policy/decider.hpp"

namespace moat::policy {
namespace {

// A scripted check: runs at the given stages, adds its findings, then answers `verdict` (or
// throws). Counts its runs so that a test can see which checks the pipeline reached.
class FakeCheck final : public Check {
 public:
  enum class Throw { No, StdException, NonStdException, BeforeAwaitable };

  FakeCheck(std::string name, std::vector<Stage> stages, Verdict verdict)
      : name_(std::move(name)), stages_(std::move(stages)), verdict_(std::move(verdict)) {}

  std::string_view name() const override { return name_; }
  bool runs_at(Stage stage) const override {
    for (Stage s : stages_)
      if (s == stage) return true;
    return false;
  }
  asio::awaitable<Verdict> run(Stage stage, MessageContext& ctx) override {
    if (throws == Throw::BeforeAwaitable) throw std::logic_error("thrown before the coroutine");
    return run_coro(stage, ctx);
  }

  std::vector<Finding> findings;
  Throw throws = Throw::No;
  int runs = 0;

 private:
  asio::awaitable<Verdict> run_coro(Stage, MessageContext& ctx) {
    ++runs;
    for (const auto& f : findings) ctx.add_finding(f.name, f.score, f.detail);
    if (throws == Throw::StdException) throw std::runtime_error("scripted failure");
    if (throws == Throw::NonStdException) throw 42;
    co_return verdict_;
  }

  std::string name_;
  std::vector<Stage> stages_;
  Verdict verdict_;
};

const std::vector<Stage> kAllStages = {Stage::Connect, Stage::Helo, Stage::MailFrom,
                                      Stage::RcptTo, Stage::EndOfData};

RelayConfig test_relay() {
  RelayConfig c;
  c.domains = {"example.test"};
  return c;
}

DeciderConfig thresholds(double reject, double quarantine) {
  DeciderConfig d;
  d.reject_score = reject;
  d.quarantine_score = quarantine;
  return d;
}

// Builds a pipeline from FakeChecks, keeping plain pointers to them for inspection.
struct Harness {
  std::vector<FakeCheck*> fakes;
  std::unique_ptr<Pipeline> pipeline;

  explicit Harness(std::vector<std::unique_ptr<FakeCheck>> checks,
                   DeciderConfig decider = thresholds(15, 10)) {
    std::vector<std::unique_ptr<Check>> owned;
    for (auto& c : checks) {
      fakes.push_back(c.get());
      owned.push_back(std::move(c));
    }
    pipeline = std::make_unique<Pipeline>(RelayCheck(test_relay()), std::move(owned),
                                          Decider(std::move(decider)));
  }
};

std::unique_ptr<FakeCheck> fake(std::string name, std::vector<Stage> stages, Verdict verdict) {
  return std::make_unique<FakeCheck>(std::move(name), stages, std::move(verdict));
}

// Runs one stage the way a front end does; the pipeline promises never to throw.
Verdict run_stage(const Pipeline& p, Stage stage, MessageContext& ctx) {
  asio::io_context io;
  std::optional<Verdict> out;
  std::exception_ptr error;
  asio::co_spawn(io, p.run(stage, ctx), [&](std::exception_ptr e, Verdict v) {
    error = e;
    out = std::move(v);
  });
  io.run();
  CHECK_MESSAGE(!error, "Pipeline::run let an exception escape");
  REQUIRE(out.has_value());
  return *out;
}

MessageContext context_from(std::string_view ip) {
  MessageContext ctx;
  ctx.session.sid = "test";
  ctx.session.client_ip = *IpAddress::parse(ip);
  return ctx;
}

Recipient recipient(std::string_view path) {
  auto parsed = parse_path(path, false);
  REQUIRE(parsed.ok());
  Recipient r;
  r.path = parsed.path;
  r.address = parsed.path.address();
  return r;
}

bool passes(const Verdict& v) { return v.action == Action::Continue || v.action == Action::Accept; }

TEST_CASE("pipeline: the first final verdict wins and names its check") {
  struct Row {
    Verdict first, second, third;
    Action want;
    std::string_view decided_by;  // "" when the stage passes
    int third_runs;
  };
  const Row rows[] = {
      {Verdict::next(), Verdict::reject(550, "5.7.1", "no"), Verdict::tempfail(451, "4.7.1", "later"),
       Action::Reject, "second", 0},
      {Verdict::next(), Verdict::tempfail(451, "4.7.1", "later"), Verdict::reject(550, "5.7.1", "no"),
       Action::TempFail, "second", 0},
      {Verdict::reject(550, "5.7.1", "no"), Verdict::accept(), Verdict::accept(), Action::Reject,
       "first", 0},
      {Verdict::next(), Verdict::next(), Verdict::reject(554, "5.7.1", "no"), Action::Reject,
       "third", 1},
      {Verdict{Action::Discard, {}, {}}, Verdict::reject(550, "5.7.1", "no"), Verdict::next(),
       Action::Discard, "first", 0},
      {Verdict{Action::Quarantine, {}, {}}, Verdict::reject(550, "5.7.1", "no"), Verdict::next(),
       Action::Quarantine, "first", 0},
      {Verdict::next(), Verdict::next(), Verdict::next(), Action::Continue, "", 1},
  };
  for (const auto& row : rows) {
    for (Stage stage : {Stage::Connect, Stage::MailFrom, Stage::EndOfData}) {
      CAPTURE(to_string(row.want));
      CAPTURE(to_string(stage));
      std::vector<std::unique_ptr<FakeCheck>> checks;
      checks.push_back(fake("first", {stage}, row.first));
      checks.push_back(fake("second", {stage}, row.second));
      checks.push_back(fake("third", {stage}, row.third));
      Harness h(std::move(checks));
      auto ctx = context_from("203.0.113.5");
      Verdict v = run_stage(*h.pipeline, stage, ctx);
      CHECK(v.action == row.want);
      CHECK(v.check == row.decided_by);
      CHECK(h.fakes[0]->runs == 1);
      CHECK(h.fakes[2]->runs == row.third_runs);
      if (row.want == Action::Reject) CHECK(v.reply.code / 100 == 5);
      if (row.want == Action::TempFail) CHECK(v.reply.code / 100 == 4);
    }
  }
}

TEST_CASE("pipeline: Accept ends the stage, but only that stage") {
  std::vector<std::unique_ptr<FakeCheck>> checks;
  checks.push_back(fake("permit", {Stage::Helo, Stage::MailFrom}, Verdict::accept()));
  checks.push_back(fake("deny", {Stage::Helo, Stage::MailFrom}, Verdict::reject(550, "5.7.1", "no")));
  Harness h(std::move(checks));
  auto ctx = context_from("203.0.113.5");
  Verdict v = run_stage(*h.pipeline, Stage::Helo, ctx);
  CHECK(passes(v));
  CHECK(h.fakes[0]->runs == 1);
  CHECK(h.fakes[1]->runs == 0);
  // The next stage starts over.
  v = run_stage(*h.pipeline, Stage::MailFrom, ctx);
  CHECK(passes(v));
  CHECK(h.fakes[0]->runs == 2);
  CHECK(h.fakes[1]->runs == 0);
}

TEST_CASE("pipeline: Accept is not overruled by the Decider's score") {
  std::vector<std::unique_ptr<FakeCheck>> checks;
  checks.push_back(fake("scorer", {Stage::EndOfData}, Verdict::next()));
  checks.back()->findings = {{"rule.bad", 20, ""}};
  checks.push_back(fake("allowlist", {Stage::EndOfData}, Verdict::accept()));
  Harness h(std::move(checks), thresholds(15, 10));
  auto ctx = context_from("203.0.113.5");
  Verdict v = run_stage(*h.pipeline, Stage::EndOfData, ctx);
  CHECK(v.action == Action::Accept);
  CHECK(v.check == "allowlist");
  // Without the permit the same findings reject.
  std::vector<std::unique_ptr<FakeCheck>> only;
  only.push_back(fake("scorer", {Stage::EndOfData}, Verdict::next()));
  only.back()->findings = {{"rule.bad", 20, ""}};
  Harness h2(std::move(only), thresholds(15, 10));
  auto ctx2 = context_from("203.0.113.5");
  Verdict v2 = run_stage(*h2.pipeline, Stage::EndOfData, ctx2);
  CHECK(v2.action == Action::Reject);
  CHECK(v2.check == "decider");
}

TEST_CASE("pipeline: checks that do not run at a stage are skipped") {
  for (Stage stage : kAllStages) {
    CAPTURE(to_string(stage));
    // "elsewhere" would reject at every stage but this one.
    std::vector<Stage> others;
    for (Stage s : kAllStages)
      if (s != stage) others.push_back(s);
    std::vector<std::unique_ptr<FakeCheck>> checks;
    checks.push_back(fake("elsewhere", others, Verdict::reject(550, "5.7.1", "no")));
    checks.push_back(fake("here", {stage}, Verdict::next()));
    Harness h(std::move(checks));
    auto ctx = context_from("203.0.113.5");
    auto rcpt = recipient("<user@example.test>");
    ctx.current_rcpt = &rcpt;
    Verdict v = run_stage(*h.pipeline, stage, ctx);
    CHECK(passes(v));
    CHECK(h.fakes[0]->runs == 0);
    CHECK(h.fakes[1]->runs == 1);
  }
  // A check for one stage never runs at another.
  std::vector<std::unique_ptr<FakeCheck>> checks;
  checks.push_back(fake("helo-only", {Stage::Helo}, Verdict::reject(550, "5.7.1", "no")));
  Harness h(std::move(checks));
  for (Stage stage : kAllStages) {
    if (stage == Stage::Helo) continue;
    CAPTURE(to_string(stage));
    auto ctx = context_from("203.0.113.5");
    auto rcpt = recipient("<user@example.test>");
    ctx.current_rcpt = &rcpt;
    Verdict v = run_stage(*h.pipeline, stage, ctx);
    CHECK(passes(v));
  }
  CHECK(h.fakes[0]->runs == 0);
  auto ctx = context_from("203.0.113.5");
  CHECK(run_stage(*h.pipeline, Stage::Helo, ctx).action == Action::Reject);
  CHECK(h.fakes[0]->runs == 1);
}

TEST_CASE("pipeline: a throwing check tempfails with 451 and never accepts") {
  using T = FakeCheck::Throw;
  for (T how : {T::StdException, T::NonStdException, T::BeforeAwaitable}) {
    for (Stage stage : {Stage::Connect, Stage::MailFrom, Stage::EndOfData}) {
      CAPTURE(static_cast<int>(how));
      CAPTURE(to_string(stage));
      std::vector<std::unique_ptr<FakeCheck>> checks;
      checks.push_back(fake("broken", {stage}, Verdict::accept()));
      checks.push_back(fake("later", {stage}, Verdict::accept()));
      checks.front()->throws = how;
      Harness h(std::move(checks));
      auto ctx = context_from("203.0.113.5");
      Verdict v = run_stage(*h.pipeline, stage, ctx);
      CHECK(v.action == Action::TempFail);
      CHECK(v.reply.code == 451);
      CHECK(v.reply.enhanced.rfind("4.", 0) == 0);
      CHECK(v.check == "broken");
      CHECK(h.fakes[1]->runs == 0);
      // The log line must say what happened.
      bool found = false;
      for (const auto& f : ctx.findings)
        if (f.name == "internal.check_error" && f.detail.find("broken") != std::string::npos)
          found = true;
      CHECK(found);
    }
  }
}

TEST_CASE("pipeline: a throwing check is not outvoted by the Decider or earlier findings") {
  std::vector<std::unique_ptr<FakeCheck>> checks;
  checks.push_back(fake("scorer", {Stage::EndOfData}, Verdict::next()));
  checks.push_back(fake("broken", {Stage::EndOfData}, Verdict::next()));
  checks[0]->findings = {{"rule.low", 1, ""}};
  checks[1]->throws = FakeCheck::Throw::StdException;
  Harness h(std::move(checks));
  auto ctx = context_from("203.0.113.5");
  Verdict v = run_stage(*h.pipeline, Stage::EndOfData, ctx);
  CHECK(v.action == Action::TempFail);
  CHECK(v.reply.code == 451);
}

TEST_CASE("pipeline: the relay check runs first at RCPT and cannot be bypassed") {
  struct Row {
    std::string_view rcpt;
    std::string_view client;
    Action want;
    std::string_view decided_by;
  };
  // clang-format off
  const Row rows[] = {
    {"<user@ext.test>", "203.0.113.5", Action::Reject, "relay"},
    {"<user%ext.test@example.test>", "203.0.113.5", Action::Reject, "relay"},
    {"<@example.test:user@ext.test>", "203.0.113.5", Action::Reject, "relay"},
    {"<user@[192.0.2.1]>", "203.0.113.5", Action::Reject, "relay"},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.rcpt);
    // A check that would permit everything, at every stage.
    std::vector<std::unique_ptr<FakeCheck>> checks;
    checks.push_back(fake("yes-man", kAllStages, Verdict::accept()));
    Harness h(std::move(checks));
    auto ctx = context_from(row.client);
    auto rcpt = recipient(row.rcpt);
    ctx.current_rcpt = &rcpt;
    Verdict v = run_stage(*h.pipeline, Stage::RcptTo, ctx);
    CHECK(v.action == row.want);
    CHECK(v.check == row.decided_by);
    CHECK(v.reply.code == 554);
    CHECK(v.reply.enhanced == "5.7.1");
    CHECK(h.fakes[0]->runs == 0);
  }
}

TEST_CASE("pipeline: after the relay check allows a recipient, the other RCPT checks still run") {
  // DESIGN.md: at RCPT "relay access is mandatory and runs first; recipient validation;
  // per-recipient reject". Passing the relay check must not skip recipient validation.
  struct Row {
    std::string_view rcpt;
    std::string_view client;
  };
  const Row rows[] = {{"<user@example.test>", "203.0.113.5"},
                      {"<user@EXAMPLE.TEST.>", "203.0.113.5"},
                      {"<user@ext.test>", "10.1.2.3"}};  // trusted client, any domain
  for (const auto& row : rows) {
    CAPTURE(row.rcpt);
    CAPTURE(row.client);
    RelayConfig relay = test_relay();
    relay.trusted_networks = {*Cidr::parse("10.0.0.0/8")};
    std::vector<std::unique_ptr<Check>> checks;
    auto unknown_user =
        std::make_unique<FakeCheck>("recipients", std::vector<Stage>{Stage::RcptTo},
                                    Verdict::reject(550, "5.1.1", "No such user"));
    FakeCheck* probe = unknown_user.get();
    checks.push_back(std::move(unknown_user));
    Pipeline p(RelayCheck(relay), std::move(checks), Decider(thresholds(15, 10)));
    auto ctx = context_from(row.client);
    auto rcpt = recipient(row.rcpt);
    ctx.current_rcpt = &rcpt;
    Verdict v = run_stage(p, Stage::RcptTo, ctx);
    CHECK(probe->runs == 1);
    CHECK(v.action == Action::Reject);
    CHECK(v.check == "recipients");
    CHECK(v.reply.code == 550);
    CHECK(v.reply.enhanced == "5.1.1");
  }
}

TEST_CASE("pipeline: the relay check does not run at other stages") {
  // A foreign sender is no relay attempt; and without a current recipient the relay check
  // would tempfail, so passing here proves it did not run.
  Harness h({});
  for (Stage stage : {Stage::Connect, Stage::Helo, Stage::MailFrom, Stage::EndOfData}) {
    CAPTURE(to_string(stage));
    auto ctx = context_from("203.0.113.5");
    auto sender = parse_path("<someone@ext.test>", false);
    REQUIRE(sender.ok());
    ctx.envelope.sender = sender.path;
    Verdict v = run_stage(*h.pipeline, stage, ctx);
    CHECK(v.action == Action::Continue);
  }
  auto ctx = context_from("203.0.113.5");
  Verdict v = run_stage(*h.pipeline, Stage::RcptTo, ctx);  // no current_rcpt: fail safe
  CHECK(v.action == Action::TempFail);
  CHECK(v.check == "relay");
}

TEST_CASE("pipeline: the Decider weighs findings after the checks") {
  struct Row {
    Stage stage;
    double score;  // total of the findings the check adds
    Action want;
  };
  // clang-format off
  const Row rows[] = {
    {Stage::MailFrom, 16, Action::Reject},
    {Stage::MailFrom, 12, Action::Continue},     // quarantine only at end of data
    {Stage::EndOfData, 16, Action::Reject},
    {Stage::EndOfData, 12, Action::Quarantine},
    {Stage::EndOfData, 9, Action::Continue},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(to_string(row.stage));
    CAPTURE(row.score);
    std::vector<std::unique_ptr<FakeCheck>> checks;
    checks.push_back(fake("scorer", {row.stage}, Verdict::next()));
    checks[0]->findings = {{"rule.a", row.score / 2, ""}, {"rule.b", row.score / 2, ""}};
    Harness h(std::move(checks), thresholds(15, 10));
    auto ctx = context_from("203.0.113.5");
    Verdict v = run_stage(*h.pipeline, row.stage, ctx);
    CHECK(v.action == row.want);
    if (v.final()) CHECK(v.check == "decider");
    CHECK(ctx.findings.size() == 2);
  }
}

TEST_CASE("decider: thresholds per stage") {
  struct Row {
    std::vector<Finding> findings;
    Stage stage;
    Action want;
  };
  const Decider d(thresholds(15, 10));
  // clang-format off
  const std::vector<Row> rows = {
    {{}, Stage::EndOfData, Action::Continue},
    {{{"a", 14.9, ""}}, Stage::Connect, Action::Continue},
    {{{"a", 15, ""}}, Stage::Connect, Action::Reject},          // at or above reject_score
    {{{"a", 15, ""}}, Stage::Helo, Action::Reject},
    {{{"a", 10, ""}, {"b", 5, ""}}, Stage::MailFrom, Action::Reject},
    {{{"a", 30, ""}}, Stage::RcptTo, Action::Reject},
    {{{"a", 15, ""}}, Stage::EndOfData, Action::Reject},
    {{{"a", 10, ""}}, Stage::EndOfData, Action::Quarantine},    // at or above quarantine_score
    {{{"a", 14.9, ""}}, Stage::EndOfData, Action::Quarantine},
    {{{"a", 9.9, ""}}, Stage::EndOfData, Action::Continue},
    {{{"a", 10, ""}}, Stage::Connect, Action::Continue},        // no quarantine before the data
    {{{"a", 10, ""}}, Stage::Helo, Action::Continue},
    {{{"a", 10, ""}}, Stage::MailFrom, Action::Continue},
    {{{"a", 14, ""}}, Stage::RcptTo, Action::Continue},
    {{{"a", 20, ""}, {"b", -8, ""}}, Stage::EndOfData, Action::Quarantine},  // negative scores count
    {{{"a", 20, ""}, {"b", -11, ""}}, Stage::EndOfData, Action::Continue},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(to_string(row.stage));
    CAPTURE(d.total(row.findings));
    Verdict v = d.decide(row.stage, row.findings);
    CHECK(v.action == row.want);
    if (v.action == Action::Reject) {
      CHECK(v.reply.code / 100 == 5);
      CHECK(v.reply.enhanced.rfind("5.", 0) == 0);
    }
  }
}

TEST_CASE("decider: [decider.scores] overrides a finding's default score by name") {
  auto cfg = load_config_text(
      "[relay]\ndomains = [\"example.test\"]\n"
      "[decider]\nreject_score = 15\nquarantine_score = 10\n"
      "[decider.scores]\n\"spf.fail\" = 20\n\"rule.noisy\" = 0\n\"dkim.fail\" = 11.5\n",
      "decider.toml");
  REQUIRE_MESSAGE(cfg.ok(), (cfg.ok() ? "" : cfg.error().message));
  const Decider d(cfg->decider);
  struct Row {
    std::vector<Finding> findings;
    Stage stage;
    double total;
    Action want;
  };
  // clang-format off
  const std::vector<Row> rows = {
    {{{"spf.fail", 1, ""}}, Stage::MailFrom, 20, Action::Reject},         // raised
    {{{"rule.noisy", 50, ""}}, Stage::EndOfData, 0, Action::Continue},    // silenced
    {{{"dkim.fail", 2, ""}}, Stage::EndOfData, 11.5, Action::Quarantine},
    {{{"dkim.fail", 2, ""}}, Stage::MailFrom, 11.5, Action::Continue},
    {{{"rule.other", 3, ""}}, Stage::EndOfData, 3, Action::Continue},      // no override: default
    {{{"rule.other", 3, ""}, {"dkim.fail", 0, ""}}, Stage::EndOfData, 14.5, Action::Quarantine},
    {{{"SPF.FAIL", 1, ""}}, Stage::MailFrom, 1, Action::Continue},         // names are exact
    {{{"spf.fail", 1, ""}, {"rule.noisy", 50, ""}}, Stage::RcptTo, 20, Action::Reject},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(to_string(row.stage));
    CAPTURE(row.total);
    CHECK(d.total(row.findings) == doctest::Approx(row.total));
    CHECK(d.decide(row.stage, row.findings).action == row.want);
  }
  CHECK(d.score({"spf.fail", 1, ""}) == 20);
  CHECK(d.score({"rule.other", 3, ""}) == 3);
}

}  // namespace
}  // namespace moat::policy
