// ScannerCheck: every configured [[scanner]] as one policy::Check, so that the scanners of a
// stage run in parallel (the Pipeline runs checks one after another). Each scanner has its own
// deadline; the check waits for all of them, then merges:
//   findings   → ctx.findings as scanner.<name>.<plugin's name> (for the Decider);
//   headers    → ctx.add_headers (already validated by the protocol layer);
//   actions    → reject 554 5.7.1, tempfail 451 4.7.1 (with the plugin's text), quarantine,
//                discard; when several scanners decide, reject > tempfail > quarantine > discard;
//   a failure  → finding scanner.<name>.error (score 0) and, with on_error = "tempfail",
//                451 4.7.1; with "continue" the scanner is left out.
// Report-only scanners get an event and are never waited for.
#pragma once

#include <asio/any_io_executor.hpp>
#include <memory>
#include <vector>
#include <zmq.hpp>

#include "policy/check.hpp"
#include "policy/config.hpp"
#include "scanners/external/scanner_client.hpp"

namespace moat::scanners {

class ScannerCheck final : public policy::Check {
 public:
  ScannerCheck(asio::any_io_executor ex, const std::vector<policy::ScannerConfig>& scanners);
  ~ScannerCheck() override;

  // Binds every scanner's endpoint; the first error names the scanner and endpoint.
  Result<bool> start();

  std::string_view name() const override { return "scanner"; }
  bool runs_at(policy::Stage stage) const override;
  asio::awaitable<policy::Verdict> run(policy::Stage stage, policy::MessageContext& ctx) override;

  ScannerClient& client(std::size_t i) { return *clients_[i]; }

 private:
  asio::any_io_executor ex_;
  zmq::context_t zmq_;  // before the clients: their sockets must close first
  std::vector<std::unique_ptr<ScannerClient>> clients_;
};

}  // namespace moat::scanners
