// The spooled envelope: what Moat knows about a message besides its bytes. Stored as text lines
// "key value" (values %XX-escaped) after the message bytes in the queue file; see spool.hpp.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "policy/header_fields.hpp"
#include "policy/result.hpp"

namespace moat::gateway {

struct SpoolRecipient {
  enum class State { Pending, Delivered, Failed };
  std::string address;
  std::string notify;  // DSN NOTIFY (RFC 3461), "" when not given
  std::string orcpt;   // DSN ORCPT, "" when not given
  State state = State::Pending;
  std::string diagnostic;  // the last reply about this recipient ("550 5.1.1 ..."), for DSNs
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
  std::vector<policy::HeaderRemoval> remove_headers;  // received fields dropped at delivery
  // Delivery bookkeeping, rewritten (appended) after each attempt; see spool.hpp.
  std::uint64_t message_size = 0;  // the message is the first message_size octets of the file
  int attempts = 0;
  std::int64_t next_attempt = 0;   // Unix seconds; 0: now
  std::string last_error;
  bool operator==(const SpoolEnvelope&) const = default;
};

std::string serialize(const SpoolEnvelope& env);
Result<SpoolEnvelope> parse_envelope(std::string_view text);

}  // namespace moat::gateway
