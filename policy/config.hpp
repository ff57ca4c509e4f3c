// Moat's configuration: one TOML file, validated once at load and then shared read-only.
// Every key is known; an unknown key or a bad value is an error that names file:line, never a
// silent default. load_config() collects every error rather than stopping at the first.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "policy/network.hpp"
#include "policy/result.hpp"
#include "policy/verdict.hpp"

namespace moat::policy {

struct Endpoint {
  std::string host;  // "127.0.0.1", "::1"
  std::uint16_t port = 0;
  std::string to_string() const;
};

enum class BareNewline { Reject, Normalize };
enum class RouteTls { None, Opportunistic, Required };
enum class ListenerMode {
  Queue,  // accepted mail is spooled, then delivered (250 once it is on disk)
  Proxy,  // before-queue: the transaction is relayed live to the backend, whose reply counts
};

struct Listener {
  Endpoint address;
  ListenerMode mode = ListenerMode::Queue;
  // Proxy: the longest wait for the backend (connect, each reply); then 451 4.4.1.
  std::chrono::seconds proxy_timeout{100};
};

struct ServerConfig {
  std::string hostname;                  // default: the system's host name
  // `listen` entries: "ADDRESS:PORT" (queue mode) or
  // { address = "ADDRESS:PORT", mode = "queue" | "proxy", proxy_timeout = "100s" }.
  std::vector<Listener> listen;
  std::string spool_dir;
  std::uint64_t max_message_size = 25 * 1024 * 1024;
  std::size_t max_recipients = 100;      // RFC 5321 §4.5.3.1.8 minimum
  std::size_t max_sessions = 1000;
  std::size_t max_sessions_per_ip = 20;
  std::size_t max_line_length = 1000;    // text line incl. CRLF, RFC 5321 §4.5.3.1.6
  std::size_t max_bad_commands = 10;     // then 421 and disconnect
  std::chrono::seconds command_timeout{300};  // RFC 5321 §4.5.3.2.7
  std::chrono::seconds data_timeout{180};     // between data blocks, §4.5.3.2.5
  std::chrono::seconds max_session_time{3600};
  BareNewline bare_newline = BareNewline::Reject;
  std::string user;                      // drop to this user after binding (when root)
};

struct TlsConfig {
  std::string cert;  // PEM chain; empty: an ephemeral self-signed certificate is made at start
  std::string key;
  std::string min_version = "1.2";  // "1.2" or "1.3"
  bool require = false;             // refuse MAIL before STARTTLS
};

struct RelayConfig {
  // Recipient domains accepted from anyone: lower case, no trailing dot. ".example.test"
  // also matches every subdomain; "[192.0.2.1]" accepts that address literal.
  std::vector<std::string> domains;
  std::vector<Cidr> trusted_networks;  // may relay anywhere
  // Valid recipients of the relay domains, one per line ("user@example.test", or
  // "@example.test" for a whole domain); others get 550 5.1.1 at RCPT. "" = no validation.
  std::string recipients_file;
  // Recipient callout (like Postfix reject_unverified_recipient): each new recipient of a relay
  // domain is probed with RCPT at its route's backend; the answer is cached. 5xx → 550 5.1.1,
  // no answer or 4xx → 450 4.1.1 (never an accept on a failed probe).
  bool callout = false;
  std::chrono::seconds callout_positive_ttl{24 * 3600};
  std::chrono::seconds callout_negative_ttl{3600};
  std::chrono::seconds callout_timeout{30};
};

// Where delivery sends mail for some recipient domains. domains = ["*"] is the default route.
struct Route {
  std::vector<std::string> domains;
  std::vector<Endpoint> hosts;  // in priority order: the next is tried when one fails
  RouteTls tls = RouteTls::Opportunistic;
  bool tls_verify = false;      // verify the backend's certificate (against tls_ca or system)
  std::string tls_ca;           // CA file for verification; "" = system store
  std::string tls_server_name;  // name to verify and send as SNI; "" = none
  std::size_t max_connections = 10;  // per host
};

struct DeliveryConfig {
  bool enabled = true;  // false: accepted mail waits in active/ (backend maintenance)
  std::size_t concurrency = 20;               // messages being delivered at once
  std::chrono::seconds connect_timeout{30};
  std::chrono::seconds command_timeout{300};  // RFC 5321 §4.5.3.2 client values
  std::chrono::seconds data_timeout{600};
  std::chrono::seconds retry_min{60};          // first retry; doubles up to retry_max
  std::chrono::seconds retry_max{4 * 3600};
  std::chrono::seconds max_lifetime{5 * 86400};  // then a DSN
  std::chrono::seconds idle_connection{30};     // keep a backend connection for reuse
};

// A rate limit ([[limit]]): a token bucket per value of `key`, refilled at `rate` per `per`,
// holding at most `burst` (default: rate). What a token is depends on `counts`:
// connections (at connect: 421 4.7.0), messages (at MAIL: 450 4.7.1), recipients (at RCPT:
// 450 4.7.1), bytes (at end of data: 451 4.7.1).
enum class LimitKey { ClientIp, ClientNet, Helo, Sender, SenderDomain, Recipient, RcptDomain };
enum class LimitCounts { Connections, Messages, Recipients, Bytes };
struct LimitConfig {
  std::string name;
  LimitKey key = LimitKey::ClientIp;
  LimitCounts counts = LimitCounts::Connections;
  double rate = 0;
  std::chrono::seconds per{60};
  double burst = 0;
  // Not limited: clients in these networks; for sender/recipient keys, these domains (".x"
  // also matches subdomains).
  std::vector<Cidr> exempt_networks;
  std::vector<std::string> exempt_domains;
};

// Greylisting (RFC 6647) at RCPT, keyed by (client /24 or /64, sender, recipient).
struct GreylistConfig {
  bool enabled = false;
  std::chrono::seconds delay{300};            // a retry before this is deferred again
  std::chrono::seconds retry_window{2 * 86400};  // a first attempt is forgotten after this
  std::chrono::seconds pass_ttl{35 * 86400};  // a passed triplet needs no retry this long
  std::int64_t auto_allowlist = 5;  // clients whose retries passed this often skip it (0: off)
  std::vector<Cidr> exempt_networks;
  std::vector<std::string> exempt_domains;  // recipient or sender domain
};

// Where rate-limit and greylist state lives.
struct StateConfig {
  bool redis = false;                    // backend = "memory" | "redis"
  Endpoint redis_address{"127.0.0.1", 6379};
  std::chrono::milliseconds timeout{500};
  std::string prefix = "moat:";
  bool fail_open = true;  // on_error = "allow" (logged loudly) | "tempfail"
};

// Postscreen-like tests before and around the greeting.
struct PregreetConfig {
  std::chrono::milliseconds wait{0};     // 0: off. Silence expected before the banner.
  std::chrono::seconds cache_ttl{86400};  // a client that passed is not made to wait again
};

struct DeciderConfig {
  double reject_score = 15;
  double quarantine_score = 10;
  std::map<std::string, double, std::less<>> scores;  // per-finding score overrides
};

// --- sender authentication (auth/) ---
struct DkimConfig {
  bool enabled = true;
  std::size_t max_signatures = 10;  // more are ignored: bounds DNS and CPU per message
  unsigned min_rsa_bits = 1024;     // RFC 8301 §3.2: never below 1024
};

// What Moat does when a message fails DMARC under the domain's published policy.
enum class DmarcAction { None, Quarantine, Reject };
struct DmarcConfig {
  bool enabled = true;
  DmarcAction on_reject = DmarcAction::Reject;          // p=reject: 550 5.7.1
  DmarcAction on_quarantine = DmarcAction::Quarantine;  // p=quarantine
};

struct AuthConfig {
  std::string authserv_id;  // Authentication-Results authserv-id; default: server.hostname
};

// [rules]: content rules (scanners/). dir = "" means no content rules are loaded.
struct RulesConfig {
  std::string dir;        // directory of *.toml rule files
  std::string cache_dir;  // compiled-database cache; "" = none (an unwritable one is skipped)
};
// --- external scanner plugins ([[scanner]], plugins/PROTOCOL.md) ---
enum class ScannerOnError { TempFail, Continue };
struct ScannerConfig {
  std::string name;      // [a-z0-9_-]+, unique; findings are named scanner.<name>.…
  std::string endpoint;  // "tcp://127.0.0.1:7001" or "ipc:///path": Moat binds, plugins connect
  std::chrono::seconds timeout{10};  // deadline of one request
  ScannerOnError on_error = ScannerOnError::TempFail;
  std::vector<Stage> stages{Stage::EndOfData};
  std::uint64_t max_size = 25 * 1024 * 1024;  // larger messages are not sent
  bool report_only = false;                   // send events, never wait for or use a reply
  std::size_t breaker_failures = 5;           // failures in a row that open the breaker
  std::chrono::seconds breaker_cooldown{30};  // how long an open breaker skips the scanner
};
// --- end external scanner plugins ---

struct Config {
  std::string source;  // file name, or "<embedded default>"
  ServerConfig server;
  TlsConfig tls;
  RelayConfig relay;
  std::vector<Route> routes;
  DeliveryConfig delivery;
  DeciderConfig decider;
  std::vector<LimitConfig> limits;
  GreylistConfig greylist;
  StateConfig state;
  PregreetConfig pregreet;
  DkimConfig dkim;
  DmarcConfig dmarc;
  AuthConfig auth;
  RulesConfig rules;
  std::vector<ScannerConfig> scanners;  // [[scanner]]

  // The route for a recipient domain (any case, optional trailing dot): exact entry, then
  // ".parent" entries, then "*"; nullptr when there is none.
  const Route* route_for(std::string_view domain) const;
  // The backend of proxy listeners: the default route, or the only route. nullptr if neither
  // exists (load_config refuses a proxy listener then).
  const Route* proxy_route() const;
};

// The configuration `moat serve` runs with when no --config is given: an ordinary user can start
// it and send mail to it at once. It is also what `moat config default` prints.
std::string_view default_config_text();

// Parses and validates. On failure the Error holds one "file:line: reason" per line.
Result<Config> load_config_file(const std::string& path);
Result<Config> load_config_text(std::string_view text, const std::string& name);

}  // namespace moat::policy
