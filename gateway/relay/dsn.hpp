// Delivery status notifications (RFC 3464 multipart/report, RFC 3461 semantics).
// A DSN goes to the envelope sender from the null sender <>, so a DSN that cannot be
// delivered is never answered by another one: no bounce loops.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/spool/envelope.hpp"

namespace moat::gateway {

// Whether a failure of `rcpt` is reported to the sender: never for the null sender, and
// only when NOTIFY asks for FAILURE (or was not given; RFC 3461 §4.1 default).
bool wants_failure_dsn(const SpoolEnvelope& env, const SpoolRecipient& rcpt);

// The DSN message (headers and body, CRLF line ends) for the recipients at `failed`, whose
// diagnostic holds the reply that ended them. `original` is the message as spooled; RET=HDRS
// returns only its header.
std::string make_failure_dsn(const SpoolEnvelope& env, std::string_view original,
                             const std::vector<std::size_t>& failed,
                             std::string_view reporting_mta, std::string_view dsn_qid);

}  // namespace moat::gateway
