// The scanner plugin wire format (plugins/PROTOCOL.md, version 1), shared by the gateway client
// and the C++ plugin SDK. Pure functions over strings: no ZeroMQ here, so that every malformed
// input can be tested as a value. Nothing in this file throws on bad input.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "policy/message_context.hpp"
#include "policy/result.hpp"

namespace moat::scanners {

inline constexpr std::string_view kProtocolTag = "MOAT/1";
inline constexpr std::size_t kMaxHeaderFrame = 1 << 20;
inline constexpr std::size_t kMaxHeaderLines = 10000;
inline constexpr std::size_t kMaxAddHeaders = 16;
inline constexpr std::size_t kMaxReplyText = 200;

// The key=value lines of a header frame, in order (keys may repeat for lists).
class Fields {
 public:
  void add(std::string key, std::string value);
  // The last value of `key`, or `fallback` when absent.
  std::string get(std::string_view key, std::string_view fallback = {}) const;
  bool has(std::string_view key) const;
  std::vector<std::string> all(std::string_view key) const;
  const std::vector<std::pair<std::string, std::string>>& lines() const { return lines_; }

 private:
  std::vector<std::pair<std::string, std::string>> lines_;
};

// Parses a header frame. Fails (with the reason) on a line without '=', a key outside
// [a-z0-9_]+, an oversized frame or too many lines. Does not require any particular key.
Result<Fields> parse_fields(std::string_view frame);
// Encodes fields; CR and LF inside values become spaces (a value can never start a new line).
std::string encode_fields(const Fields& fields);

// A decoded multipart message (without ZeroMQ's empty delimiter frame): the tag is checked,
// the header parsed and required to have `type` and `id`; `body` is frame 2 if present.
struct Decoded {
  Fields fields;
  std::string type;
  std::string id;
  std::string body;
};
Result<Decoded> decode(const std::vector<std::string>& frames);

// --- requests (gateway → plugin) ------------------------------------------------------------

// The facts of a scan/event request; what a plugin handler sees.
struct ScanRequest {
  std::string type = "scan";  // "scan" | "event"
  std::string id;
  std::string stage;  // connect | helo | mail | rcpt | data
  std::string session;
  std::string qid;
  std::string client_ip;
  std::string client_port;
  std::string helo;
  bool tls = false;
  std::string tls_version;
  std::string tls_cipher;
  std::string sender;
  std::vector<std::string> recipients;
  std::uint64_t size = 0;
  std::string message;  // at stage data
};
// The request for `ctx` at `stage` (message bytes only at EndOfData), as frames after the
// delimiter: [tag, header, message?].
ScanRequest make_request(const policy::MessageContext& ctx, policy::Stage stage, std::string id,
                         bool report_only);
std::vector<std::string> encode_request(const ScanRequest& r);
Result<ScanRequest> parse_request(Decoded d);  // d.type must be scan or event

// --- replies (plugin → gateway) -------------------------------------------------------------

struct PluginFinding {
  std::string name;
  double score = 0;
  std::string detail;
};
enum class PluginAction { None, Reject, TempFail, Quarantine, Discard };

struct ScanResult {
  std::string id;
  PluginAction action = PluginAction::None;
  std::string reply;  // SMTP reply text, sanitized on parse
  std::vector<PluginFinding> findings;
  std::vector<std::pair<std::string, std::string>> headers;  // validated on parse
  std::vector<std::string> dropped;  // why a finding or header line was refused (for logs)
};
std::vector<std::string> encode_result(const ScanResult& r);
// Parses a `type=result` message. A bad action or a finding without a numeric score fails the
// whole reply (a plugin that says something we cannot read must not be half-believed); invalid
// header fields are dropped (recorded in `dropped`).
Result<ScanResult> parse_result(const Decoded& d);

struct Hello {
  std::string id;
  std::string name;
  std::string version;
  std::vector<std::string> capabilities;
  std::vector<std::string> stages;
};
std::vector<std::string> encode_hello_request(const std::string& id);
std::vector<std::string> encode_hello(const Hello& h);
Result<Hello> parse_hello(const Decoded& d);

std::vector<std::string> encode_error(const std::string& id, const std::string& message);

// --- validation helpers ---------------------------------------------------------------------

// RFC 5322 field name (printable ASCII without ':', 1..76 chars) and an unfolded value of
// printable ASCII and tab.
bool valid_header_field(std::string_view name, std::string_view value);
// Printable ASCII only (others → '?'), at most kMaxReplyText characters.
std::string sanitize_reply_text(std::string_view text);
// A finding name part: lower case, [a-z0-9._-] kept, others → '_', no empty dotted parts.
std::string normalize_finding_name(std::string_view name);

}  // namespace moat::scanners
