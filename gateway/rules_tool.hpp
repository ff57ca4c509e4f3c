// Content rules from the gateway's side: compiling the configured rule directory (used at start
// and on SIGHUP by `moat serve`) and the `moat rules` subcommands:
//   moat rules lint [--config FILE] DIR           exit 1 with file:line errors on any problem
//   moat rules test [--config FILE] [--rules DIR] FILE.eml
//                                                 which rules hit, where, with a decoded snippet
// The relay domains of the configuration (embedded default without --config) fill the
// ${protected_domains} variable of rule patterns.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "policy/config.hpp"
#include "policy/result.hpp"
#include "scanners/content_engine.hpp"

namespace moat::gateway {

// Parses and compiles every rule file in `dir` (cache per config.rules.cache_dir). The Error
// holds one "file:line: reason" per line.
Result<std::shared_ptr<const scanners::CompiledRules>> compile_rules(const policy::Config& config,
                                                                     const std::string& dir,
                                                                     int* from_cache = nullptr);

// `moat rules ...` with the arguments after "rules" (--config already removed). Returns the
// exit status.
int rules_command(const policy::Config& config, const std::vector<std::string>& args);

}  // namespace moat::gateway
