// Check: the one interface every policy check implements, so that it runs unchanged in the SMTP
// gateway and in the milter. A check looks at the MessageContext for one Stage, may add findings,
// and answers next (no opinion), accept (permit this stage), or a final verdict.
// A check never throws for an expected failure (DNS timeout, scanner down): it answers the
// failure mode it was configured with, by default tempfail. An exception is a bug; the Pipeline
// turns it into a tempfail so that a bug can never accept a message.
#pragma once

#include <asio/awaitable.hpp>
#include <string_view>

#include "policy/message_context.hpp"
#include "policy/verdict.hpp"

namespace moat::policy {

class Check {
 public:
  virtual ~Check() = default;
  virtual std::string_view name() const = 0;
  virtual bool runs_at(Stage stage) const = 0;
  virtual asio::awaitable<Verdict> run(Stage stage, MessageContext& ctx) = 0;
};

}  // namespace moat::policy
