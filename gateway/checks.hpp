// The check set: every check the pipeline runs, built from the configuration in one place, so
// `moat serve`, `moat milter` and `moat check` decide exactly alike. It owns what the checks
// share (state store, DNS resolver, DKIM/DMARC engines, compiled rules) and outlives them.
#pragma once

#include <asio/any_io_executor.hpp>
#include <memory>
#include <string>

#include "auth/dkim.hpp"
#include "auth/dmarc.hpp"
#include "auth/resolver.hpp"
#include "policy/config.hpp"
#include "policy/pipeline.hpp"
#include "policy/result.hpp"
#include "policy/state_store.hpp"
#include "scanners/content_engine.hpp"

namespace moat::gateway {

struct CheckSet {
  std::unique_ptr<policy::StateStore> state;
  std::unique_ptr<auth::Resolver> resolver;
  std::unique_ptr<auth::DkimVerifier> dkim;
  std::unique_ptr<auth::PublicSuffixList> psl;
  std::unique_ptr<auth::DmarcEvaluator> dmarc;
  scanners::RuleStore rules;
  std::unique_ptr<policy::Pipeline> pipeline;
};

// Builds the checks in their fixed order (limits, recipients, callout, greylist, DKIM, DMARC,
// Authentication-Results, content rules, scanners) on `ex`. Fails with a message (one line per
// rule error) when something cannot start: rules that do not compile, a scanner that cannot
// connect, libopendkim or libpsl failing to initialise.
Result<std::unique_ptr<CheckSet>> make_checks(const policy::Config& cfg, asio::any_io_executor ex);

}  // namespace moat::gateway
