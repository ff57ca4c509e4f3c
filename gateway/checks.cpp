#include "gateway/checks.hpp"

#include <exception>

#include "auth/auth_results.hpp"
#include "gateway/log.hpp"
#include "gateway/relay/callout_check.hpp"
#include "gateway/rules_tool.hpp"
#include "gateway/state/redis_store.hpp"
#include "policy/greylist.hpp"
#include "policy/rate_limit.hpp"
#include "policy/recipient_check.hpp"
#include "scanners/content_check.hpp"
#include "scanners/external/scanner_check.hpp"

namespace moat::gateway {

Result<std::unique_ptr<CheckSet>> make_checks(const policy::Config& cfg, asio::any_io_executor ex) {
  auto set = std::make_unique<CheckSet>();
  std::vector<std::unique_ptr<policy::Check>> checks;
  // Rate-limit and greylist state: in this process, or shared through Redis.
  if (cfg.state.redis) set->state = std::make_unique<RedisStore>(ex, cfg.state);
  else set->state = std::make_unique<policy::MemoryStore>();
  if (!cfg.limits.empty())
    checks.push_back(std::make_unique<policy::RateLimitCheck>(cfg.limits, *set->state, cfg.state));
  if (!cfg.relay.recipients_file.empty())
    checks.push_back(std::make_unique<policy::RecipientCheck>(cfg.relay.recipients_file,
                                                              policy::RelayCheck(cfg.relay)));
  if (cfg.relay.callout) checks.push_back(std::make_unique<CalloutCheck>(ex, cfg));
  if (cfg.greylist.enabled)
    checks.push_back(std::make_unique<policy::GreylistCheck>(cfg.greylist, *set->state, cfg.state));
  // Sender authentication. End-of-data order: DKIM, then DMARC (reads SPF and DKIM from
  // ctx.auth), then the Authentication-Results header that reports them.
  // TODO(DNS resolver): set->resolver is built here once the asynchronous resolver lands; until
  // then DKIM and DMARC cannot fetch keys or policies and do not run.
  try {
    if (set->resolver && cfg.dkim.enabled) {
      set->dkim = std::make_unique<auth::DkimVerifier>(*set->resolver, cfg.dkim);
      checks.push_back(std::make_unique<auth::DkimCheck>(*set->dkim));
    }
    if (set->resolver && cfg.dmarc.enabled) {
      set->psl = std::make_unique<auth::PublicSuffixList>();
      set->dmarc = std::make_unique<auth::DmarcEvaluator>(*set->resolver, *set->psl);
      checks.push_back(std::make_unique<auth::DmarcCheck>(*set->dmarc, cfg.dmarc));
    }
  } catch (const std::exception& e) {
    return Error{e.what()};
  }
  checks.push_back(std::make_unique<auth::AuthResultsCheck>(cfg.auth.authserv_id));
  // Content rules ([rules] dir): compiled before serving; a bad rule set refuses to start.
  if (!cfg.rules.dir.empty()) {
    int cached = 0;
    auto compiled = compile_rules(cfg, cfg.rules.dir, &cached);
    if (!compiled) return Error{compiled.error().message + "\ncontent rules do not compile"};
    spdlog::info("event=rules_loaded dir={} rules={} cached_databases={}", kv(cfg.rules.dir),
                 (*compiled)->rules().rules.size(), cached);
    set->rules.swap(*compiled);
    scanners::MimeLimits limits;
    limits.max_decoded = cfg.server.max_message_size;
    checks.push_back(std::make_unique<scanners::ContentCheck>(set->rules, limits));
  }
  // External scanner plugins ([[scanner]]): one check runs them all in parallel.
  if (!cfg.scanners.empty()) {
    auto scanners = std::make_unique<scanners::ScannerCheck>(ex, cfg.scanners);
    if (auto started = scanners->start(); !started) return Error{started.error().message};
    checks.push_back(std::move(scanners));
  }
  set->pipeline = std::make_unique<policy::Pipeline>(policy::RelayCheck(cfg.relay), std::move(checks),
                                                     policy::Decider(cfg.decider));
  return set;
}

}  // namespace moat::gateway
