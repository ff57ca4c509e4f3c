// The C++ plugin SDK: a scanner plugin is a handler from a request to a result, and
//   return moat::plugin::serve(endpoint, {"myscanner", "1.0", {"av"}, {"data"}}, handler);
// serve() connects a REP socket to Moat's endpoint (plugins/PROTOCOL.md), answers hello,
// decodes each request, calls the handler and encodes its result; a malformed request or a
// handler error becomes an `error` reply, never a crash. Start several processes on one endpoint
// to share the load. SIGTERM/SIGINT end serve() after the request under way.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "policy/result.hpp"
#include "scanners/external/protocol.hpp"

namespace moat::plugin {

using Request = scanners::ScanRequest;
using Reply = scanners::ScanResult;
using scanners::PluginAction;

struct Info {
  std::string name;
  std::string version;
  std::vector<std::string> capabilities;
  std::vector<std::string> stages{"data"};
};

// A failure (Result error) is sent as an `error` reply: Moat applies the scanner's on_error.
using Handler = std::function<Result<Reply>(const Request&)>;

// Serves until SIGTERM/SIGINT. Returns a process exit code (0 on a signal, 1 when the endpoint
// is unusable).
int serve(const std::string& endpoint, const Info& info, const Handler& handler);

// The answer to one request's frames (after the delimiter): what serve() sends back. Exposed so
// that the protocol handling can be tested without sockets.
std::vector<std::string> answer(const std::vector<std::string>& frames, const Info& info,
                                const Handler& handler);

// "--key value" from argv, or `fallback`.
std::string option(int argc, char** argv, const std::string& key, const std::string& fallback);

}  // namespace moat::plugin
