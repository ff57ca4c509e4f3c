#include "policy/config.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>
#include <toml.hpp>

#include "policy/address.hpp"

namespace moat::policy {
namespace {

constexpr std::string_view kDefaultConfig = R"(# Moat embedded default configuration (`moat config default` prints it).
# Runs as an ordinary user: loopback only, mail for example.test, spool in ./moat-spool.
[server]
listen = ["127.0.0.1:2525"]
spool_dir = "moat-spool"
max_message_size = "25M"
max_recipients = 100
max_sessions = 200
max_sessions_per_ip = 20

[tls]
# No cert/key: an ephemeral self-signed certificate is generated at start.
min_version = "1.2"
require = false

[relay]
domains = ["example.test"]
trusted_networks = []

[[route]]
domains = ["example.test"]
host = "127.0.0.1:10025"
tls = "opportunistic"
)";

using Value = toml::value;

// Walks the TOML tree, converting values and recording "file:line: reason" for each problem.
class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  void error(const Value& at, const std::string& msg) {
    errors_.push_back(fmt::format("{}:{}: {}", file_, at.location().line(), msg));
  }
  void error_line(unsigned line, const std::string& msg) {
    errors_.push_back(fmt::format("{}:{}: {}", file_, line, msg));
  }
  const std::vector<std::string>& errors() const { return errors_; }

  // Reports every key of `table` that is not in `allowed`.
  void known_keys(const Value& table, std::string_view where,
                  std::initializer_list<std::string_view> allowed) {
    for (const auto& [k, v] : table.as_table())
      if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
        error(v, fmt::format("unknown key '{}' in {}", k, where));
  }

  const Value* find(const Value& table, const std::string& key) {
    const auto& t = table.as_table();
    auto it = t.find(key);
    return it == t.end() ? nullptr : &it->second;
  }

  void get(const Value& t, const std::string& key, std::string& out) {
    if (auto* v = find(t, key)) {
      if (v->is_string()) out = v->as_string().str;
      else error(*v, fmt::format("'{}' must be a string", key));
    }
  }
  void get(const Value& t, const std::string& key, bool& out) {
    if (auto* v = find(t, key)) {
      if (v->is_boolean()) out = v->as_boolean();
      else error(*v, fmt::format("'{}' must be true or false", key));
    }
  }
  void get(const Value& t, const std::string& key, double& out) {
    if (auto* v = find(t, key)) {
      if (v->is_floating()) out = v->as_floating();
      else if (v->is_integer()) out = static_cast<double>(v->as_integer());
      else error(*v, fmt::format("'{}' must be a number", key));
    }
  }
  // A count: a positive integer within [min, max].
  template <class T>
  void get_count(const Value& t, const std::string& key, T& out, std::uint64_t min,
                 std::uint64_t max) {
    if (auto* v = find(t, key)) {
      if (!v->is_integer() || v->as_integer() < 0 ||
          static_cast<std::uint64_t>(v->as_integer()) < min ||
          static_cast<std::uint64_t>(v->as_integer()) > max)
        error(*v, fmt::format("'{}' must be an integer from {} to {}", key, min, max));
      else
        out = static_cast<T>(v->as_integer());
    }
  }
  // A size: bytes as an integer, or a string with a binary suffix ("512K", "25M", "1G").
  void get_size(const Value& t, const std::string& key, std::uint64_t& out) {
    auto* v = find(t, key);
    if (!v) return;
    std::optional<std::uint64_t> n;
    if (v->is_integer() && v->as_integer() > 0) n = v->as_integer();
    if (v->is_string()) n = parse_scaled(v->as_string().str, {{'K', 1024}, {'M', 1 << 20}, {'G', 1 << 30}});
    if (!n || *n == 0) error(*v, fmt::format("'{}' must be a size such as 26214400 or \"25M\"", key));
    else out = *n;
  }
  // A duration: seconds as an integer, or a string "30s", "5m", "1h", "5d"; at most `max`.
  void get_duration(const Value& t, const std::string& key, std::chrono::seconds& out,
                    std::chrono::seconds max = std::chrono::hours(7 * 24)) {
    auto* v = find(t, key);
    if (!v) return;
    auto ms = duration_ms(*v);
    if (!ms || *ms == 0 || *ms % 1000 != 0 || *ms / 1000 > static_cast<std::uint64_t>(max.count()))
      error(*v, fmt::format("'{}' must be a duration such as 300 or \"5m\", at most {}s", key,
                            max.count()));
    else out = std::chrono::seconds(*ms / 1000);
  }
  // The same with millisecond precision: also "500ms".
  void get_duration(const Value& t, const std::string& key, std::chrono::milliseconds& out,
                    std::chrono::milliseconds max) {
    auto* v = find(t, key);
    if (!v) return;
    auto ms = duration_ms(*v);
    if (!ms || *ms > static_cast<std::uint64_t>(max.count()))
      error(*v, fmt::format("'{}' must be a duration such as \"500ms\" or \"3s\", at most {}ms",
                            key, max.count()));
    else out = std::chrono::milliseconds(*ms);
  }
  // The strings of an array, each with its own value so that an error about one entry names
  // that entry's line (arrays often span several lines).
  struct Item {
    std::string str;
    const Value* at;
  };
  std::vector<Item> get_strings(const Value& t, const std::string& key) {
    std::vector<Item> out;
    auto* v = find(t, key);
    if (!v) return out;
    if (!v->is_array()) {
      error(*v, fmt::format("'{}' must be an array of strings", key));
      return out;
    }
    for (const auto& e : v->as_array()) {
      if (e.is_string()) out.push_back({e.as_string().str, &e});
      else error(e, fmt::format("'{}' must hold only strings", key));
    }
    return out;
  }

 private:
  static std::optional<std::uint64_t> duration_ms(const Value& v) {
    if (v.is_integer()) {
      if (v.as_integer() < 0 || v.as_integer() > 1'000'000'000) return std::nullopt;
      return static_cast<std::uint64_t>(v.as_integer()) * 1000;
    }
    if (!v.is_string()) return std::nullopt;
    std::string str = v.as_string().str;
    if (str.size() > 2 && str.compare(str.size() - 2, 2, "ms") == 0) {
      auto n = parse_scaled(str.substr(0, str.size() - 2), {});
      return n;
    }
    auto n = parse_scaled(str, {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}});
    if (!n || *n > UINT64_MAX / 1000) return std::nullopt;
    return *n * 1000;
  }
  static std::optional<std::uint64_t> parse_scaled(
      const std::string& s, std::initializer_list<std::pair<char, std::uint64_t>> units) {
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc() || p == s.data()) return std::nullopt;
    std::string_view rest(p, s.data() + s.size() - p);
    if (rest.empty()) return n;
    if (rest.size() != 1) return std::nullopt;
    for (auto [c, mult] : units)
      if (rest[0] == c || rest[0] == std::tolower(c) || rest[0] == std::toupper(c)) {
        if (n > UINT64_MAX / mult) return std::nullopt;
        return n * mult;
      }
    return std::nullopt;
  }

  std::string file_;
  std::vector<std::string> errors_;
};

std::optional<Endpoint> parse_endpoint(std::string_view s) {
  Endpoint e;
  std::string_view host, port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return std::nullopt;
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos || s.find(':') != colon) return std::nullopt;
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (!IpAddress::parse(host)) return std::nullopt;
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535)
    return std::nullopt;
  e.host = std::string(host);
  e.port = static_cast<std::uint16_t>(p);
  return e;
}

// Normalises a relay/route domain: lower case, no trailing dot; "" when invalid.
std::string normalize_domain(const std::string& raw) {
  std::string d = ascii_lower(raw);
  if (!d.empty() && d.front() == '[') return valid_address_literal(d) ? d : "";
  if (!d.empty() && d.back() == '.') d.pop_back();
  std::string_view body = d;
  if (!body.empty() && body.front() == '.') body.remove_prefix(1);
  return valid_domain(body, true) ? d : "";
}

std::vector<std::string> read_domains(Reader& r, const Value& t, const std::string& key) {
  std::vector<std::string> out;
  for (auto& [d, at] : r.get_strings(t, key)) {
    auto n = normalize_domain(d);
    if (n.empty()) r.error(*at, fmt::format("'{}' is not a valid domain", d));
    else out.push_back(n);
  }
  return out;
}

std::string system_hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == 0) return "localhost";
  return buf;
}

// One `listen` entry: "ADDRESS:PORT", or a table with the address and its mode.
void read_listener(Reader& r, const Value& entry, std::vector<Listener>& out) {
  Listener l;
  std::string address;
  if (entry.is_string()) {
    address = entry.as_string().str;
  } else if (entry.is_table()) {
    r.known_keys(entry, "a listen entry", {"address", "mode", "proxy_timeout"});
    r.get(entry, "address", address);
    std::string mode = "queue";
    r.get(entry, "mode", mode);
    if (mode == "proxy") l.mode = ListenerMode::Proxy;
    else if (mode != "queue") r.error(entry, "'mode' must be \"queue\" or \"proxy\"");
    r.get_duration(entry, "proxy_timeout", l.proxy_timeout);
  } else {
    r.error(entry, "'listen' entries must be \"ADDRESS:PORT\" or { address = ..., mode = ... }");
    return;
  }
  if (auto e = parse_endpoint(address)) {
    l.address = *e;
    out.push_back(l);
  } else {
    r.error(entry, fmt::format("'{}' is not ADDRESS:PORT", address));
  }
}

void read_server(Reader& r, const Value& t, ServerConfig& s) {
  r.known_keys(t, "[server]",
               {"hostname", "listen", "spool_dir", "max_message_size", "max_recipients",
                "max_sessions", "max_sessions_per_ip", "max_line_length", "max_bad_commands",
                "command_timeout", "data_timeout", "max_session_time", "bare_newline", "user"});
  r.get(t, "hostname", s.hostname);
  if (!s.hostname.empty() && !valid_domain(s.hostname, false))
    r.error(*r.find(t, "hostname"), fmt::format("'{}' is not a valid host name", s.hostname));
  if (auto* v = r.find(t, "listen")) {
    s.listen.clear();
    if (!v->is_array()) r.error(*v, "'listen' must be an array");
    else
      for (const auto& entry : v->as_array()) read_listener(r, entry, s.listen);
    if (s.listen.empty()) r.error(*v, "'listen' must name at least one address");
  }
  r.get(t, "spool_dir", s.spool_dir);
  r.get_size(t, "max_message_size", s.max_message_size);
  r.get_count(t, "max_recipients", s.max_recipients, 1, 100000);
  r.get_count(t, "max_sessions", s.max_sessions, 1, 1000000);
  r.get_count(t, "max_sessions_per_ip", s.max_sessions_per_ip, 1, 1000000);
  r.get_count(t, "max_line_length", s.max_line_length, 1000, 1000000);
  r.get_count(t, "max_bad_commands", s.max_bad_commands, 1, 1000);
  r.get_duration(t, "command_timeout", s.command_timeout);
  r.get_duration(t, "data_timeout", s.data_timeout);
  r.get_duration(t, "max_session_time", s.max_session_time);
  std::string bare = "reject";
  r.get(t, "bare_newline", bare);
  if (bare == "reject") s.bare_newline = BareNewline::Reject;
  else if (bare == "normalize") s.bare_newline = BareNewline::Normalize;
  else r.error(*r.find(t, "bare_newline"), "'bare_newline' must be \"reject\" or \"normalize\"");
  r.get(t, "user", s.user);
}

void read_tls(Reader& r, const Value& t, TlsConfig& c) {
  r.known_keys(t, "[tls]", {"cert", "key", "min_version", "require"});
  r.get(t, "cert", c.cert);
  r.get(t, "key", c.key);
  r.get(t, "min_version", c.min_version);
  r.get(t, "require", c.require);
  if (c.min_version != "1.2" && c.min_version != "1.3")
    r.error(*r.find(t, "min_version"), "'min_version' must be \"1.2\" or \"1.3\"");
  if (c.cert.empty() != c.key.empty())
    r.error(t, "'cert' and 'key' must be given together");
  for (auto* key : {"cert", "key"}) {
    const std::string& file = std::string_view(key) == "cert" ? c.cert : c.key;
    if (!file.empty() && access(file.c_str(), R_OK) != 0)
      r.error(*r.find(t, key), fmt::format("cannot read '{}'", file));
  }
}

void read_relay(Reader& r, const Value& t, RelayConfig& c) {
  r.known_keys(t, "[relay]", {"domains", "trusted_networks", "recipients_file", "callout",
                              "callout_positive_ttl", "callout_negative_ttl",
                              "callout_timeout"});
  r.get(t, "callout", c.callout);
  r.get_duration(t, "callout_positive_ttl", c.callout_positive_ttl);
  r.get_duration(t, "callout_negative_ttl", c.callout_negative_ttl);
  r.get_duration(t, "callout_timeout", c.callout_timeout);
  if (r.find(t, "domains")) c.domains = read_domains(r, t, "domains");
  r.get(t, "recipients_file", c.recipients_file);
  if (!c.recipients_file.empty() && access(c.recipients_file.c_str(), R_OK) != 0)
    r.error(*r.find(t, "recipients_file"), fmt::format("cannot read '{}'", c.recipients_file));
  if (r.find(t, "trusted_networks")) {
    c.trusted_networks.clear();
    for (auto& [s, entry] : r.get_strings(t, "trusted_networks")) {
      auto cidr = Cidr::parse(s);
      const Value& at = *entry;
      if (!cidr) {
        r.error(at, fmt::format("'{}' is not a network (CIDR such as 192.0.2.0/24)", s));
      } else if (cidr->prefix_len() < (cidr->is_v4() ? 8 : 16)) {
        // No shipped or accepted configuration may make Moat an open relay.
        r.error(at, fmt::format("'{}' is too broad for trusted_networks: Moat would be an open "
                                "relay (shortest allowed prefix: /8 IPv4, /16 IPv6)", s));
      } else {
        c.trusted_networks.push_back(*cidr);
      }
    }
  }
}

void read_route(Reader& r, const Value& t, Route& route) {
  r.known_keys(t, "[[route]]", {"domains", "host", "hosts", "tls", "tls_verify", "tls_ca",
                                "tls_server_name", "max_connections"});
  if (auto* v = r.find(t, "domains"); v && v->is_array() && v->as_array().size() == 1 &&
                                      v->as_array()[0].is_string() &&
                                      v->as_array()[0].as_string().str == "*") {
    route.domains = {"*"};  // the default route
  } else {
    route.domains = read_domains(r, t, "domains");
  }
  if (route.domains.empty()) r.error(t, "[[route]] needs 'domains'");
  std::vector<Reader::Item> hosts;
  if (auto* v = r.find(t, "host")) {
    if (v->is_string()) hosts.push_back({v->as_string().str, v});
    else r.error(*v, "'host' must be a string");
    if (r.find(t, "hosts")) r.error(*v, "give either 'host' or 'hosts', not both");
  }
  for (auto& item : r.get_strings(t, "hosts")) hosts.push_back(item);
  for (auto& [h, at] : hosts) {
    if (auto e = parse_endpoint(h)) route.hosts.push_back(*e);
    else r.error(*at, fmt::format("'{}' is not ADDRESS:PORT", h));
  }
  if (hosts.empty()) r.error(t, "[[route]] needs 'host' or 'hosts'");
  std::string tls = "opportunistic";
  r.get(t, "tls", tls);
  if (tls == "none") route.tls = RouteTls::None;
  else if (tls == "opportunistic") route.tls = RouteTls::Opportunistic;
  else if (tls == "required") route.tls = RouteTls::Required;
  else r.error(*r.find(t, "tls"), "'tls' must be \"none\", \"opportunistic\" or \"required\"");
  r.get(t, "tls_verify", route.tls_verify);
  r.get(t, "tls_ca", route.tls_ca);
  if (!route.tls_ca.empty() && access(route.tls_ca.c_str(), R_OK) != 0)
    r.error(*r.find(t, "tls_ca"), fmt::format("cannot read '{}'", route.tls_ca));
  r.get(t, "tls_server_name", route.tls_server_name);
  r.get_count(t, "max_connections", route.max_connections, 1, 10000);
}

void read_delivery(Reader& r, const Value& t, DeliveryConfig& d) {
  r.known_keys(t, "[delivery]", {"enabled", "concurrency", "connect_timeout", "command_timeout",
                                 "data_timeout", "retry_min", "retry_max", "max_lifetime",
                                 "idle_connection"});
  r.get(t, "enabled", d.enabled);
  r.get_count(t, "concurrency", d.concurrency, 1, 100000);
  r.get_duration(t, "connect_timeout", d.connect_timeout);
  r.get_duration(t, "command_timeout", d.command_timeout);
  r.get_duration(t, "data_timeout", d.data_timeout);
  r.get_duration(t, "retry_min", d.retry_min);
  r.get_duration(t, "retry_max", d.retry_max);
  r.get_duration(t, "max_lifetime", d.max_lifetime);
  r.get_duration(t, "idle_connection", d.idle_connection);
  if (d.retry_max < d.retry_min) r.error(t, "'retry_max' is shorter than 'retry_min'");
}

void read_decider(Reader& r, const Value& t, DeciderConfig& d) {
  r.known_keys(t, "[decider]", {"reject_score", "quarantine_score", "scores"});
  r.get(t, "reject_score", d.reject_score);
  r.get(t, "quarantine_score", d.quarantine_score);
  if (auto* s = r.find(t, "scores")) {
    if (!s->is_table()) {
      r.error(*s, "'scores' must be a table of finding = score");
    } else {
      for (const auto& [name, v] : s->as_table()) {
        if (v.is_floating()) d.scores[name] = v.as_floating();
        else if (v.is_integer()) d.scores[name] = static_cast<double>(v.as_integer());
        else r.error(v, fmt::format("score for '{}' must be a number", name));
      }
    }
  }
}

// `exempt` lists: networks (CIDR or address) and domains, told apart by their syntax.
void read_exempt(Reader& r, const Value& t, std::vector<Cidr>& networks,
                 std::vector<std::string>& domains) {
  for (auto& [e, at] : r.get_strings(t, "exempt")) {
    if (auto cidr = Cidr::parse(e)) networks.push_back(*cidr);
    else if (auto d = normalize_domain(e); !d.empty() && d[0] != '[') domains.push_back(d);
    else r.error(*at, fmt::format("'{}' is neither a network nor a domain", e));
  }
}

void read_limit(Reader& r, const Value& t, LimitConfig& l) {
  r.known_keys(t, "[[limit]]", {"name", "key", "counts", "rate", "per", "burst", "exempt"});
  r.get(t, "name", l.name);
  bool name_ok = !l.name.empty() && l.name.size() <= 64 &&
                 std::all_of(l.name.begin(), l.name.end(), [](char c) {
                   return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
                 });
  if (!name_ok) r.error(r.find(t, "name") ? *r.find(t, "name") : t,
                        "[[limit]] needs a 'name' of a-z, 0-9, _ and -");
  static const std::pair<std::string_view, LimitKey> keys[] = {
      {"client_ip", LimitKey::ClientIp},   {"client_net", LimitKey::ClientNet},
      {"helo", LimitKey::Helo},            {"sender", LimitKey::Sender},
      {"sender_domain", LimitKey::SenderDomain}, {"recipient", LimitKey::Recipient},
      {"rcpt_domain", LimitKey::RcptDomain}};
  static const std::pair<std::string_view, LimitCounts> counts[] = {
      {"connections", LimitCounts::Connections}, {"messages", LimitCounts::Messages},
      {"recipients", LimitCounts::Recipients}, {"bytes", LimitCounts::Bytes}};
  std::string key = "client_ip", what = "connections";
  r.get(t, "key", key);
  r.get(t, "counts", what);
  auto k = std::find_if(std::begin(keys), std::end(keys), [&](auto& p) { return p.first == key; });
  auto c = std::find_if(std::begin(counts), std::end(counts), [&](auto& p) { return p.first == what; });
  if (k == std::end(keys))
    r.error(*r.find(t, "key"), "'key' must be client_ip, client_net, helo, sender, "
                               "sender_domain, recipient or rcpt_domain");
  else l.key = k->second;
  if (c == std::end(counts))
    r.error(*r.find(t, "counts"), "'counts' must be connections, messages, recipients or bytes");
  else l.counts = c->second;
  if (k != std::end(keys) && c != std::end(counts)) {
    // A key must be known at the stage where the tokens are counted.
    bool ok = l.counts == LimitCounts::Recipients ||
              (l.counts == LimitCounts::Connections
                   ? (l.key == LimitKey::ClientIp || l.key == LimitKey::ClientNet)
                   : (l.key != LimitKey::Recipient && l.key != LimitKey::RcptDomain));
    if (!ok)
      r.error(*r.find(t, "key"), fmt::format("key = \"{}\" is not known when {} are counted",
                                             key, what));
  }
  r.get(t, "rate", l.rate);
  if (!(l.rate > 0)) r.error(r.find(t, "rate") ? *r.find(t, "rate") : t,
                             "[[limit]] needs a 'rate' above 0");
  r.get_duration(t, "per", l.per, std::chrono::hours(24));
  l.burst = l.rate;
  r.get(t, "burst", l.burst);
  if (l.burst < l.rate && r.find(t, "burst")) r.error(*r.find(t, "burst"), "'burst' is below 'rate'");
  read_exempt(r, t, l.exempt_networks, l.exempt_domains);
}

void read_greylist(Reader& r, const Value& t, GreylistConfig& g) {
  r.known_keys(t, "[greylist]", {"enabled", "delay", "retry_window", "pass_ttl",
                                 "auto_allowlist", "exempt"});
  r.get(t, "enabled", g.enabled);
  r.get_duration(t, "delay", g.delay);
  r.get_duration(t, "retry_window", g.retry_window, std::chrono::hours(24 * 30));
  r.get_duration(t, "pass_ttl", g.pass_ttl, std::chrono::hours(24 * 366));
  r.get_count(t, "auto_allowlist", g.auto_allowlist, 0, 1000000);
  if (g.retry_window <= g.delay) r.error(t, "'retry_window' must be longer than 'delay'");
  read_exempt(r, t, g.exempt_networks, g.exempt_domains);
}

void read_state(Reader& r, const Value& t, StateConfig& st) {
  r.known_keys(t, "[state]", {"backend", "redis", "timeout", "prefix", "on_error"});
  std::string backend = "memory", on_error = "allow", address;
  r.get(t, "backend", backend);
  if (backend == "redis") st.redis = true;
  else if (backend != "memory") r.error(*r.find(t, "backend"), "'backend' must be \"memory\" or \"redis\"");
  r.get(t, "redis", address);
  if (!address.empty()) {
    if (auto e = parse_endpoint(address)) st.redis_address = *e;
    else r.error(*r.find(t, "redis"), fmt::format("'{}' is not ADDRESS:PORT", address));
  }
  r.get_duration(t, "timeout", st.timeout, std::chrono::milliseconds(60000));
  if (st.timeout.count() == 0) r.error(*r.find(t, "timeout"), "'timeout' must be above 0");
  r.get(t, "prefix", st.prefix);
  r.get(t, "on_error", on_error);
  if (on_error == "tempfail") st.fail_open = false;
  else if (on_error != "allow") r.error(*r.find(t, "on_error"), "'on_error' must be \"allow\" or \"tempfail\"");
}

void read_pregreet(Reader& r, const Value& t, PregreetConfig& p) {
  r.known_keys(t, "[pregreet]", {"wait", "cache_ttl"});
  r.get_duration(t, "wait", p.wait, std::chrono::milliseconds(60000));
  r.get_duration(t, "cache_ttl", p.cache_ttl, std::chrono::hours(24 * 30));
}

// --- sender authentication: [dkim], [dmarc], [auth] ---
void read_dkim(Reader& r, const Value& t, DkimConfig& d) {
  r.known_keys(t, "[dkim]", {"enabled", "max_signatures", "min_rsa_bits"});
  r.get(t, "enabled", d.enabled);
  r.get_count(t, "max_signatures", d.max_signatures, 1, 50);
  // RFC 8301 §3.2: keys under 1024 bits never verify; a higher floor is the operator's choice.
  r.get_count(t, "min_rsa_bits", d.min_rsa_bits, 1024, 8192);
}

void read_dmarc_action(Reader& r, const Value& t, const std::string& key, DmarcAction& out) {
  std::string v;
  if (!r.find(t, key)) return;
  r.get(t, key, v);
  if (v == "reject") out = DmarcAction::Reject;
  else if (v == "quarantine") out = DmarcAction::Quarantine;
  else if (v == "none") out = DmarcAction::None;
  else if (r.find(t, key)->is_string())
    r.error(*r.find(t, key), fmt::format("'{}' must be \"reject\", \"quarantine\" or \"none\"", key));
}

void read_dmarc(Reader& r, const Value& t, DmarcConfig& d) {
  r.known_keys(t, "[dmarc]", {"enabled", "on_reject", "on_quarantine"});
  r.get(t, "enabled", d.enabled);
  read_dmarc_action(r, t, "on_reject", d.on_reject);
  read_dmarc_action(r, t, "on_quarantine", d.on_quarantine);
}

// An authserv-id is written unquoted into every Authentication-Results: an RFC 2045 token.
bool valid_authserv_id(std::string_view id) {
  if (id.empty() || id.size() > 255) return false;
  for (unsigned char c : id)
    if (c <= 0x20 || c >= 0x7f || std::string_view("()<>@,;:\\\"/[]?=").find(static_cast<char>(c)) !=
                                      std::string_view::npos)
      return false;
  return true;
}

void read_auth(Reader& r, const Value& t, AuthConfig& a) {
  r.known_keys(t, "[auth]", {"authserv_id"});
  r.get(t, "authserv_id", a.authserv_id);
  if (r.find(t, "authserv_id") && r.find(t, "authserv_id")->is_string() &&
      !valid_authserv_id(a.authserv_id)) {
    std::string printable = a.authserv_id;  // one error per line, whatever the value holds
    for (char& ch : printable)
      if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '?';
    r.error(*r.find(t, "authserv_id"),
            fmt::format("'{}' is not a valid authserv_id (a host name, no spaces or ;)",
                        printable));
  }
}

void read_rules(Reader& r, const Value& t, RulesConfig& c) {
  r.known_keys(t, "[rules]", {"dir", "cache_dir"});
  r.get(t, "dir", c.dir);
  r.get(t, "cache_dir", c.cache_dir);
  if (!c.dir.empty() && access(c.dir.c_str(), R_OK | X_OK) != 0)
    r.error(*r.find(t, "dir"), fmt::format("cannot read rule directory '{}'", c.dir));
}

// --- external scanner plugins ([[scanner]]) ---
void read_scanner(Reader& r, const Value& t, ScannerConfig& s) {
  r.known_keys(t, "[[scanner]]", {"name", "endpoint", "timeout", "on_error", "stages", "max_size",
                                  "report_only", "breaker_failures", "breaker_cooldown"});
  r.get(t, "name", s.name);
  bool name_ok = !s.name.empty() && s.name.size() <= 32 &&
                 std::all_of(s.name.begin(), s.name.end(), [](char c) {
                   return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
                 });
  if (!name_ok) r.error(t, "[[scanner]] needs a 'name' of 1-32 characters [a-z0-9_-]");
  r.get(t, "endpoint", s.endpoint);
  auto tcp = std::string_view(s.endpoint).substr(0, 6) == "tcp://"
                 ? parse_endpoint(std::string_view(s.endpoint).substr(6))
                 : std::nullopt;
  bool ipc = s.endpoint.rfind("ipc://", 0) == 0 && s.endpoint.size() > 6 && s.endpoint.size() < 100;
  if (!tcp && !ipc)
    r.error(r.find(t, "endpoint") ? *r.find(t, "endpoint") : t,
            "[[scanner]] needs 'endpoint' = \"tcp://ADDRESS:PORT\" or \"ipc:///path\"");
  r.get_duration(t, "timeout", s.timeout);
  std::string on_error = "tempfail";
  r.get(t, "on_error", on_error);
  if (on_error == "tempfail") s.on_error = ScannerOnError::TempFail;
  else if (on_error == "continue") s.on_error = ScannerOnError::Continue;
  else r.error(*r.find(t, "on_error"), "'on_error' must be \"tempfail\" or \"continue\"");
  if (r.find(t, "stages")) {
    s.stages.clear();
    for (auto& [name, at] : r.get_strings(t, "stages")) {
      bool found = false;
      for (Stage st : {Stage::Connect, Stage::Helo, Stage::MailFrom, Stage::RcptTo,
                       Stage::EndOfData})
        if (name == to_string(st)) {
          found = true;
          if (std::find(s.stages.begin(), s.stages.end(), st) == s.stages.end())
            s.stages.push_back(st);
        }
      if (!found)
        r.error(*at, fmt::format("'{}' is not a stage (connect, helo, mail, rcpt, data)", name));
    }
    if (s.stages.empty()) r.error(*r.find(t, "stages"), "'stages' must name at least one stage");
  }
  r.get_size(t, "max_size", s.max_size);
  r.get(t, "report_only", s.report_only);
  r.get_count(t, "breaker_failures", s.breaker_failures, 1, 1000);
  r.get_duration(t, "breaker_cooldown", s.breaker_cooldown);
}

void read_scanners(Reader& r, const Value& v, std::vector<ScannerConfig>& out) {
  if (!v.is_array()) {
    r.error(v, "'scanner' must be an array of tables: [[scanner]]");
    return;
  }
  for (const auto& t : v.as_array()) {
    if (!t.is_table()) {
      r.error(t, "'scanner' entries must be tables");
      continue;
    }
    ScannerConfig s;
    read_scanner(r, t, s);
    for (const auto& other : out) {
      if (!s.name.empty() && other.name == s.name)
        r.error(t, fmt::format("scanner name '{}' is used twice", s.name));
      if (!s.endpoint.empty() && other.endpoint == s.endpoint)
        r.error(t, fmt::format("scanner endpoint '{}' is used twice", s.endpoint));
    }
    out.push_back(std::move(s));
  }
}
// --- end external scanner plugins ---

Result<Config> load(std::istream& in, const std::string& name) {
  Value root;
  try {
    root = toml::parse(in, name);
  } catch (const toml::exception& e) {
    // toml11 formats a multi-line report; its first line holds the reason.
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    if (what.rfind("[error] ", 0) == 0) what.erase(0, 8);
    return Result<Config>::fail(fmt::format("{}:{}: {}", name, e.location().line(), what));
  }
  Reader r(name);
  Config c;
  c.source = name;
  c.server.spool_dir = "/var/spool/moat";
  c.server.listen = {Listener{{"127.0.0.1", 2525}}};
  r.known_keys(root, "the top level", {"server", "tls", "relay", "route", "delivery", "decider",
                                       "limit", "greylist", "state", "pregreet", "dkim", "dmarc",
                                       "auth", "rules", "scanner"});
  auto section = [&](const char* key, auto fn) {
    if (auto* v = r.find(root, key)) {
      if (v->is_table()) fn(*v);
      else r.error(*v, fmt::format("'{}' must be a table", key));
    }
  };
  section("server", [&](const Value& v) { read_server(r, v, c.server); });
  section("tls", [&](const Value& v) { read_tls(r, v, c.tls); });
  section("relay", [&](const Value& v) { read_relay(r, v, c.relay); });
  section("delivery", [&](const Value& v) { read_delivery(r, v, c.delivery); });
  section("decider", [&](const Value& v) { read_decider(r, v, c.decider); });
  section("greylist", [&](const Value& v) { read_greylist(r, v, c.greylist); });
  section("state", [&](const Value& v) { read_state(r, v, c.state); });
  section("pregreet", [&](const Value& v) { read_pregreet(r, v, c.pregreet); });
  if (auto* v = r.find(root, "limit")) {
    if (!v->is_array()) {
      r.error(*v, "'limit' must be an array of tables: [[limit]]");
    } else {
      for (const auto& t : v->as_array()) {
        if (!t.is_table()) {
          r.error(t, "'limit' entries must be tables");
          continue;
        }
        c.limits.emplace_back();
        read_limit(r, t, c.limits.back());
        for (std::size_t i = 0; i + 1 < c.limits.size(); ++i)
          if (c.limits[i].name == c.limits.back().name && !c.limits[i].name.empty())
            r.error(t, fmt::format("a [[limit]] named '{}' exists already", c.limits[i].name));
      }
    }
  }
  section("dkim", [&](const Value& v) { read_dkim(r, v, c.dkim); });
  section("dmarc", [&](const Value& v) { read_dmarc(r, v, c.dmarc); });
  section("auth", [&](const Value& v) { read_auth(r, v, c.auth); });
  section("rules", [&](const Value& v) { read_rules(r, v, c.rules); });
  if (auto* v = r.find(root, "route")) {
    if (!v->is_array()) {
      r.error(*v, "'route' must be an array of tables: [[route]]");
    } else {
      for (const auto& t : v->as_array()) {
        if (!t.is_table()) {
          r.error(t, "'route' entries must be tables");
          continue;
        }
        c.routes.emplace_back();
        read_route(r, t, c.routes.back());
      }
    }
  }
  if (auto* v = r.find(root, "scanner")) read_scanners(r, *v, c.scanners);  // [[scanner]]
  if (c.server.hostname.empty()) c.server.hostname = system_hostname();
  for (const auto& l : c.server.listen)
    if (l.mode == ListenerMode::Proxy && !c.proxy_route()) {
      r.error(*r.find(*r.find(root, "server"), "listen"),
              "a proxy listener needs a backend: a [[route]] with domains = [\"*\"], or only "
              "one [[route]]");
      break;
    }
  if (c.relay.callout)
    for (const auto& d : c.relay.domains)
      if (!c.route_for(d[0] == '.' ? d.substr(1) : d)) {
        r.error(*r.find(*r.find(root, "relay"), "callout"),
                fmt::format("callout = true but relay domain '{}' has no [[route]] to ask", d));
        break;
      }
  if (c.auth.authserv_id.empty()) c.auth.authserv_id = c.server.hostname;
  if (c.relay.domains.empty() && c.relay.trusted_networks.empty())
    r.error_line(1, "relay.domains is empty and there are no trusted_networks: no mail would be "
                    "accepted");
  if (!r.errors().empty()) {
    std::string all;
    for (const auto& e : r.errors()) all += (all.empty() ? "" : "\n") + e;
    return Result<Config>::fail(all);
  }
  return c;
}

}  // namespace

std::string Endpoint::to_string() const {
  return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                             : fmt::format("{}:{}", host, port);
}

std::string_view default_config_text() { return kDefaultConfig; }

const Route* Config::route_for(std::string_view domain) const {
  std::string d = ascii_lower(std::string(domain));
  if (!d.empty() && d.back() == '.') d.pop_back();
  const Route* parent = nullptr;
  const Route* fallback = nullptr;
  for (const auto& route : routes) {
    for (const auto& entry : route.domains) {
      if (entry == d) return &route;
      if (entry == "*") fallback = fallback ? fallback : &route;
      else if (entry.front() == '.' && !parent &&
               (d == entry.substr(1) ||
                (d.size() > entry.size() && d.compare(d.size() - entry.size(), entry.size(), entry) == 0)))
        parent = &route;
    }
  }
  return parent ? parent : fallback;
}

const Route* Config::proxy_route() const {
  for (const auto& route : routes)
    if (route.domains.size() == 1 && route.domains[0] == "*") return &route;
  return routes.size() == 1 ? &routes[0] : nullptr;
}

Result<Config> load_config_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Result<Config>::fail(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  return load(in, path);
}

Result<Config> load_config_text(std::string_view text, const std::string& name) {
  std::istringstream in{std::string(text)};
  return load(in, name);
}

}  // namespace moat::policy
