// The spooled envelope: what Moat knows about a message besides its bytes. Stored as text lines
// "key value" (values %XX-escaped) after the message bytes in the queue file; see spool.hpp.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "policy/result.hpp"

namespace moat::gateway {

struct SpoolRecipient {
  std::string address;
  std::string notify;  // DSN NOTIFY (RFC 3461), "" when not given
  std::string orcpt;   // DSN ORCPT, "" when not given
  bool operator==(const SpoolRecipient&) const = default;
};

struct SpoolEnvelope {
  std::string qid;
  std::int64_t arrival = 0;  // Unix seconds
  std::string client_ip;
  std::string helo;
  std::string protocol;  // ESMTP, ESMTPS, UTF8SMTPS ...
  std::string tls;       // "TLSv1.3 TLS_AES_256_GCM_SHA384" or ""
  std::string sender;    // "" for the null sender
  std::string body;      // "", "7BIT", "8BITMIME"
  bool smtputf8 = false;
  std::string ret;
  std::string envid;
  std::vector<SpoolRecipient> recipients;
  std::vector<std::pair<std::string, std::string>> add_headers;  // prepended at delivery
  bool operator==(const SpoolEnvelope&) const = default;
};

std::string serialize(const SpoolEnvelope& env);
Result<SpoolEnvelope> parse_envelope(std::string_view text);

}  // namespace moat::gateway
