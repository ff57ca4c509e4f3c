// MessageContext: everything a check may look at, filled by a front end (SMTP session or milter)
// as the dialogue goes on. Session facts live as long as the connection; transaction facts are
// cleared by reset_transaction() at RSET, a new EHLO, STARTTLS and after each message.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "policy/address.hpp"
#include "policy/header_fields.hpp"
#include "policy/network.hpp"
#include "policy/verdict.hpp"

namespace moat::policy {

struct SessionInfo {
  std::string sid;
  IpAddress client_ip;
  std::uint16_t client_port = 0;
  std::string helo;        // EHLO/HELO argument as given
  bool esmtp = false;      // EHLO rather than HELO
  bool tls = false;
  std::string tls_version; // "TLSv1.3"
  std::string tls_cipher;
};

// RFC 3461 per-recipient DSN parameters, kept so delivery can pass them on.
struct Recipient {
  Path path;
  std::string address;  // as used for delivery: local@domain
  std::string notify;   // "" or e.g. "SUCCESS,FAILURE"
  std::string orcpt;    // "" or "rfc822;user@example.test" (xtext as received)
};

struct Envelope {
  Path sender;
  std::optional<std::uint64_t> declared_size;  // SIZE=
  std::string body;                            // "", "7BIT", "8BITMIME"
  bool smtputf8 = false;
  std::string ret;    // DSN RET=FULL|HDRS
  std::string envid;  // DSN ENVID= (xtext as received)
  std::vector<Recipient> recipients;  // accepted so far
};

// One verified DKIM signature, in words every front end and check can use (RFC 8601 results).
struct DkimOutcome {
  std::string result;    // "pass", "fail", "neutral", "temperror", "permerror", "policy"
  std::string domain;    // d=, lower case
  std::string selector;  // s=
  std::string header_b;  // the first 8 characters of b= (RFC 6008 header.b)
  std::string reason;    // why, when not pass
  bool testing = false;  // the key says t=y: verifiers treat the message as unsigned
};

// Sender-authentication results of the current message, shared by SPF, DKIM, DMARC and the
// Authentication-Results header. Empty strings mean "not checked".
struct AuthResults {
  std::string spf_result;  // RFC 8601 word: pass, fail, softfail, neutral, none, temperror, permerror
  std::string spf_domain;  // the domain SPF authorised (MAIL FROM's, or the HELO name)
  bool dkim_checked = false;
  std::vector<DkimOutcome> dkim;  // one per signature; empty and checked: no signature
  std::string dmarc_result;       // pass, fail, none, temperror, permerror
  std::string dmarc_domain;       // the RFC5322.From domain DMARC evaluated
  std::string dmarc_policy;       // the policy applied: none, quarantine, reject
};

struct MessageContext {
  SessionInfo session;

  // Transaction.
  std::string qid;
  Envelope envelope;
  const Recipient* current_rcpt = nullptr;  // set during Stage::RcptTo
  std::uint64_t message_size = 0;            // at Stage::EndOfData
  std::string message;  // at Stage::EndOfData: header + body as received, CRLF line ends
  std::vector<Finding> findings;
  std::vector<std::pair<std::string, std::string>> add_headers;  // prepended at delivery
  // Header fields of the received message to drop at delivery, e.g. forged
  // Authentication-Results (RFC 8601 §5); counted in `message` as received.
  std::vector<HeaderRemoval> remove_headers;
  AuthResults auth;

  void add_finding(std::string name, double score, std::string detail = {}) {
    findings.push_back({std::move(name), score, std::move(detail)});
  }
  void reset_transaction() {
    qid.clear();
    envelope = {};
    current_rcpt = nullptr;
    message_size = 0;
    message.clear();
    findings.clear();
    add_headers.clear();
    remove_headers.clear();
    auth = {};
  }
};

}  // namespace moat::policy
