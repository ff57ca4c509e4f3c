// DKIM verification (RFC 6376, RFC 8301 algorithm and key-size rules, RFC 8463 Ed25519) with
// libopendkim. One DKIM_LIB is shared by all messages; its own resolver is never used: after
// the header section the key names of every signature are fetched through Moat's Resolver
// (co_await, so the event loop never blocks), and a key-lookup callback serves libopendkim
// the records fetched for that message only.
//
// Results, per signature, in RFC 8601 words:
//   pass       the signature verified with an acceptable algorithm and key
//   fail       signature or body hash mismatch, revoked key (empty p=), expired x=
//   temperror  the key could not be fetched (DNS timeout, SERVFAIL)
//   permerror  no key (NXDOMAIN or no record), syntax errors, t=s or h= of the key violated,
//              rsa-sha1 or an RSA key under min_rsa_bits (RFC 8301: never a pass)
// A key with t=y (testing) keeps its result but is marked `testing`: RFC 6376 §3.6.1 says such
// a message is treated as unsigned, so DMARC ignores it and a failure scores nothing.
#pragma once

#include <asio/awaitable.hpp>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "auth/resolver.hpp"
#include "policy/check.hpp"
#include "policy/config.hpp"

namespace moat::auth {

struct DkimSignatureResult {
  std::string result;     // pass, fail, temperror, permerror (see the file comment)
  std::string domain;     // d=, lower case
  std::string selector;   // s=
  std::string algorithm;  // a= as libopendkim understood it: rsa-sha256, rsa-sha1, ed25519-sha256
  std::string header_b;   // first 8 characters of b=, to tell signatures apart (RFC 6008)
  std::string reason;     // why, when not pass
  unsigned key_bits = 0;  // 0 when the key was not loaded
  bool body_length = false;  // l= present: unsigned content may follow the signed part
  bool testing = false;      // key t=y
};

class DkimVerifier {
 public:
  // Initialises the shared library handle. Throws std::runtime_error if libopendkim cannot be
  // initialised (control plane, at start).
  DkimVerifier(Resolver& resolver, policy::DkimConfig config);
  ~DkimVerifier();
  DkimVerifier(const DkimVerifier&) = delete;
  DkimVerifier& operator=(const DkimVerifier&) = delete;

  // Verifies every DKIM-Signature of `message` (header and body, CRLF line ends) up to
  // max_signatures (the others are ignored). Returns one result per signature checked, in the
  // order they appear; empty when there is none. Never throws for bad input.
  asio::awaitable<std::vector<DkimSignatureResult>> verify(std::string_view message);

 private:
  struct Lib;
  Resolver& resolver_;
  policy::DkimConfig config_;
  std::unique_ptr<Lib> lib_;
};

// The policy check: at end of data, verifies ctx.message, records the results in
// ctx.auth.dkim and adds findings dkim.pass|fail|temperror|permerror (one per signature, the
// detail naming d= and s=), dkim.none when there is no signature, dkim.body_length for l=.
// Never decides alone (answers next): the Decider and DMARC weigh the findings.
class DkimCheck final : public policy::Check {
 public:
  explicit DkimCheck(DkimVerifier& verifier) : verifier_(verifier) {}
  std::string_view name() const override { return "dkim"; }
  bool runs_at(policy::Stage stage) const override { return stage == policy::Stage::EndOfData; }
  asio::awaitable<policy::Verdict> run(policy::Stage stage, policy::MessageContext& ctx) override;

  // Default scores (the Decider's [decider.scores] may override them by name).
  static constexpr double kFailScore = 3;
  static constexpr double kPermErrorScore = 1;
  static constexpr double kBodyLengthScore = 1;

 private:
  DkimVerifier& verifier_;
};

}  // namespace moat::auth
