// `moat queue ...`: the mail admin's view of the spool. Works on the files directly (every
// change is a rename, as the server makes them); a running server picks moved messages up
// within seconds.
#pragma once

#include <string>
#include <vector>

#include "policy/config.hpp"

namespace moat::gateway {

// Runs one queue subcommand; returns the process exit code (0 ok, 1 failure, 2 usage).
int queue_command(const policy::Config& config, const std::vector<std::string>& args);

}  // namespace moat::gateway
