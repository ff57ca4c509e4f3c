// Authentication-Results (RFC 8601): the header field Moat adds at end of data with the SPF,
// DKIM and DMARC results, and the detection of forged ones.
//
// Every value that may come from the client or the sender's DNS (MAIL FROM, HELO, d=, s=,
// From domain, reasons) is written as a token when it is one, otherwise as a quoted-string or
// comment with '"', '\', '(' and ')' escaped; CR, LF, other controls and non-ASCII octets
// become '?'. The only line breaks in the result are Moat's own folds ("\r\n\t"), so nothing a
// client sends can start a new header field.
#pragma once

#include <asio/awaitable.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "policy/check.hpp"
#include "policy/header_fields.hpp"
#include "policy/message_context.hpp"

namespace moat::auth {

inline constexpr std::string_view kAuthResultsField = "Authentication-Results";

struct AuthIdentities {
  std::string mail_from;  // MAIL FROM address, "" for the null sender
  std::string helo;       // HELO/EHLO argument
};

// The field value (after "Authentication-Results:"), folded with "\r\n\t" before each
// result: "authserv-id; spf=... ; dkim=...; dmarc=..." or "authserv-id; none" when nothing was
// checked. `authserv_id` must already be valid (the configuration checks it).
std::string build_authentication_results(std::string_view authserv_id,
                                         const policy::AuthResults& auth,
                                         const AuthIdentities& ids);

// The authserv-id of an Authentication-Results value (comments and folding skipped, a
// quoted-string unquoted); "" when there is none.
std::string authserv_id_of(std::string_view value);

// The Authentication-Results fields of `message` that claim `authserv_id` (compared without
// regard to case): forgeries to remove at delivery (RFC 8601 §5).
std::vector<policy::HeaderRemoval> forged_authentication_results(std::string_view message,
                                                                 std::string_view authserv_id);

// Value escaping, exposed for tests: a token or a quoted-string; a comment with its parentheses.
std::string ar_value(std::string_view s);
std::string ar_comment(std::string_view s);

// Runs last at end of data: marks forged Authentication-Results for removal and adds Moat's
// own (ctx.add_headers, prepended at delivery). Always answers next.
class AuthResultsCheck final : public policy::Check {
 public:
  explicit AuthResultsCheck(std::string authserv_id) : authserv_id_(std::move(authserv_id)) {}
  std::string_view name() const override { return "auth_results"; }
  bool runs_at(policy::Stage stage) const override { return stage == policy::Stage::EndOfData; }
  asio::awaitable<policy::Verdict> run(policy::Stage stage, policy::MessageContext& ctx) override;

 private:
  std::string authserv_id_;
};

}  // namespace moat::auth
