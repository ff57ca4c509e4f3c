// DMARC (RFC 7489) on the Public Suffix List (libpsl with Debian's publicsuffix data,
// /usr/share/publicsuffix/public_suffix_list.dafsa, via psl_latest(): the newest of that file
// and libpsl's built-in copy).
//
// The evaluation is split so that it can be tested without DNS and wired without knowing where
// SPF and DKIM results come from:
//   parse_dmarc_record()   one TXT record -> a record or why it is invalid (§6.3, §6.4)
//   evaluate_dmarc()       a pure function: From domain + SPF + DKIM results + record -> outcome
//   DmarcEvaluator         record discovery through the Resolver (§6.6.3), then evaluate_dmarc()
//   DmarcCheck             the policy check at end of data: From: fields, findings, the verdict
//
// RFC5322.From handling, fail safe (§6.6.1):
//   - no From: field, or one without a usable domain (no @, address literal, bad syntax):
//     dmarc.permerror with a score (kBadFromScore); such a message cannot claim any domain.
//   - several From: fields or several mailboxes: every distinct domain is evaluated and the
//     worst outcome counts (fail > temperror > permerror > none > pass), with the strictest
//     policy among the failing domains, so a second From: can never hide a failing one.
#pragma once

#include <asio/awaitable.hpp>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "auth/resolver.hpp"
#include "policy/check.hpp"
#include "policy/config.hpp"
#include "policy/message_context.hpp"
#include "policy/result.hpp"

namespace moat::auth {

struct DmarcRecord {
  std::string p;           // none, quarantine, reject
  std::string sp;          // subdomain policy; "" = same as p
  int pct = 100;           // 0..100
  bool adkim_strict = false;
  bool aspf_strict = false;
};

// Parses one TXT record. Not a DMARC record (does not start with "v=DMARC1"): an Error whose
// message is "not DMARC". Invalid p=/sp=/pct=/adkim=/aspf=: an Error naming the tag. Per §6.3 a
// missing or invalid p= with an rua= present is read as p=none. Unknown tags are ignored.
Result<DmarcRecord> parse_dmarc_record(std::string_view txt);

// The Public Suffix List. Thread-safe once built (libpsl contexts are read-only).
class PublicSuffixList {
 public:
  PublicSuffixList();  // psl_latest(); throws std::runtime_error when no list can be loaded
  ~PublicSuffixList();
  PublicSuffixList(const PublicSuffixList&) = delete;
  PublicSuffixList& operator=(const PublicSuffixList&) = delete;
  // The organisational domain (§3.2) of a lower-case domain: its registrable domain, or the
  // domain itself when it is a public suffix or cannot be looked up.
  std::string organizational_domain(std::string_view domain) const;

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// §3.1 identifier alignment of two lower-case domains.
bool dmarc_aligned(std::string_view a, std::string_view b, bool strict,
                   const PublicSuffixList& psl);

struct DmarcInput {
  std::string from_domain;  // lower case, valid
  std::string spf_result;   // "pass" counts; anything else does not
  std::string spf_domain;
  std::vector<policy::DkimOutcome> dkim;  // "pass" and not testing counts
};

struct DmarcOutcome {
  std::string result;   // pass, fail, none, temperror, permerror
  std::string policy;   // what the domain asks for this message: none, quarantine, reject
  std::string domain;   // the From domain evaluated
  std::string record_domain;  // where the record was found ("" when none)
  std::string reason;   // for the finding's detail
  bool spf_aligned = false;
  bool dkim_aligned = false;
};

// Evaluates `input` against `record`, found at `record_domain`. `roll` is a number in [0, 100)
// for pct= sampling (§6.6.4: when the roll is >= pct the next weaker policy applies).
DmarcOutcome evaluate_dmarc(const DmarcInput& input, const DmarcRecord& record,
                            const std::string& record_domain, unsigned roll,
                            const PublicSuffixList& psl);

class DmarcEvaluator {
 public:
  DmarcEvaluator(Resolver& resolver, const PublicSuffixList& psl)
      : resolver_(resolver), psl_(psl) {}
  // Discovers the record (_dmarc.<from>, then _dmarc.<organisational domain>) and evaluates.
  // DNS failure: temperror; several DMARC records or an invalid one: permerror; none: none.
  asio::awaitable<DmarcOutcome> evaluate(DmarcInput input, unsigned roll);

 private:
  Resolver& resolver_;
  const PublicSuffixList& psl_;
};

// The domains of the mailboxes in From: fields of `message`, lower case, in order, without
// duplicates. `ok` is false when there is no From: field or a mailbox has no valid domain.
struct FromDomains {
  std::vector<std::string> domains;
  bool ok = false;
  std::string problem;  // why not ok
  std::size_t fields = 0;
};
FromDomains from_domains(std::string_view message);

// At end of data, after DkimCheck and SPF: evaluates DMARC, records it in ctx.auth, adds
// dmarc.pass|fail|none|temperror|permerror (detail: header.from, policy, why), and on a fail
// under p=reject / p=quarantine answers what [dmarc] on_reject / on_quarantine say (default:
// 550 5.7.1 naming DMARC; quarantine).
class DmarcCheck final : public policy::Check {
 public:
  DmarcCheck(DmarcEvaluator& evaluator, policy::DmarcConfig config,
             std::function<unsigned()> roll = {});
  std::string_view name() const override { return "dmarc"; }
  bool runs_at(policy::Stage stage) const override { return stage == policy::Stage::EndOfData; }
  asio::awaitable<policy::Verdict> run(policy::Stage stage, policy::MessageContext& ctx) override;

  static constexpr double kFailScore = 5;
  static constexpr double kBadFromScore = 5;

 private:
  DmarcEvaluator& evaluator_;
  policy::DmarcConfig config_;
  std::function<unsigned()> roll_;
};

}  // namespace moat::auth
