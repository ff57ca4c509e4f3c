// Tests for policy/config.hpp: the embedded default, value conversion, and "file:line: reason"
// errors (every error reported, each naming the line that holds the offending key or value).
#include "policy/config.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>
#include <algorithm>
#include <vector>

namespace moat::policy {
namespace {

using namespace std::chrono_literals;

// A minimal valid configuration (one relay domain, so no "no mail would be accepted" error);
// test snippets are appended after it, so their line numbers start at kBaseLines + 1.
constexpr std::string_view kBase = "[relay]\ndomains = [\"example.test\"]\n";
constexpr int kBaseLines = 2;

std::vector<std::string> error_lines(const std::string& message) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= message.size()) {
    auto nl = message.find('\n', start);
    if (nl == std::string::npos) nl = message.size();
    out.push_back(message.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

// True when one error line is exactly "name:line: ..." and mentions `needle`.
bool has_error(const std::vector<std::string>& errors, const std::string& name, int line,
               std::string_view needle) {
  const std::string prefix = name + ":" + std::to_string(line) + ": ";
  for (const auto& e : errors)
    if (e.rfind(prefix, 0) == 0 && e.size() > prefix.size() &&
        e.find(needle, prefix.size()) != std::string::npos)
      return true;
  return false;
}

TEST_CASE("the embedded default configuration loads") {
  auto r = load_config_text(default_config_text(), "<embedded default>");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  const Config& c = *r;
  CHECK(c.source == "<embedded default>");
  // What `moat serve` needs to run as an ordinary user: loopback only, example.test.
  REQUIRE(c.server.listen.size() == 1);
  CHECK(c.server.listen[0].address.host == "127.0.0.1");
  CHECK(c.server.listen[0].address.port == 2525);
  CHECK(c.server.listen[0].address.to_string() == "127.0.0.1:2525");
  CHECK(c.relay.domains == std::vector<std::string>{"example.test"});
  CHECK(c.relay.trusted_networks.empty());
  CHECK(c.server.spool_dir == "moat-spool");
  CHECK(c.server.max_message_size == 25u * 1024 * 1024);  // "25M", binary suffix
  CHECK(c.server.max_recipients == 100);
  CHECK(c.tls.cert.empty());
  CHECK(c.tls.key.empty());
  CHECK(c.tls.min_version == "1.2");
  CHECK_FALSE(c.tls.require);
  REQUIRE(c.routes.size() == 1);
  CHECK(c.routes[0].domains == std::vector<std::string>{"example.test"});
  REQUIRE(c.routes[0].hosts.size() == 1);
  CHECK(c.routes[0].hosts[0].to_string() == "127.0.0.1:10025");
  CHECK(c.routes[0].tls == RouteTls::Opportunistic);
  CHECK_FALSE(c.server.hostname.empty());  // the system's host name when not configured
}

TEST_CASE("a configuration without keys takes the documented defaults") {
  auto r = load_config_text(kBase, "min.toml");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  const ServerConfig& s = r->server;
  CHECK(s.max_line_length == 1000);       // RFC 5321 §4.5.3.1.6
  CHECK(s.max_recipients == 100);         // RFC 5321 §4.5.3.1.8
  CHECK(s.command_timeout == 300s);       // RFC 5321 §4.5.3.2.7
  CHECK(s.data_timeout == 180s);
  CHECK(s.bare_newline == BareNewline::Reject);
  CHECK(r->decider.reject_score == 15);
  CHECK(r->decider.quarantine_score == 10);
}

TEST_CASE("values are converted: sizes, durations, endpoints, domains, networks, scores") {
  constexpr std::string_view text = R"(
[server]
hostname = "mx.example.test"
listen = ["0.0.0.0:25", "[::1]:2525", "::"]
max_message_size = "512K"
command_timeout = "5m"
data_timeout = "30s"
max_session_time = "1h"
bare_newline = "normalize"
max_recipients = 1000

[relay]
domains = ["Example.TEST.", ".Sub.Example.TEST", "[192.0.2.1]"]
trusted_networks = ["192.0.2.0/24", "2001:db8::/32", "10.0.0.0/8", "2001::/16"]

[decider]
reject_score = 20
quarantine_score = 7.5
[decider.scores]
"spf.fail" = 4
"rule.phish_url" = 12.5
)";
  // "::" as ADDRESS:PORT is ambiguous and must be refused; check it alone first.
  {
    auto r = load_config_text(text, "v.toml");
    REQUIRE_FALSE(r.ok());
    auto errors = error_lines(r.error().message);
    CAPTURE(r.error().message);
    CHECK(errors.size() == 1);
    CHECK(has_error(errors, "v.toml", 4, "'::'"));
  }
  std::string fixed(text);
  fixed.erase(fixed.find(", \"::\"]"), 6);  // (not replace(): a GCC 12 -O3 false -Wrestrict)
  auto r = load_config_text(fixed, "v.toml");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  const Config& c = *r;
  CHECK(c.server.hostname == "mx.example.test");
  REQUIRE(c.server.listen.size() == 2);
  CHECK(c.server.listen[0].address.host == "0.0.0.0");
  CHECK(c.server.listen[0].address.port == 25);
  CHECK(c.server.listen[1].address.host == "::1");
  CHECK(c.server.listen[1].address.port == 2525);
  CHECK(c.server.listen[1].address.to_string() == "[::1]:2525");
  CHECK(c.server.max_message_size == 512u * 1024);
  CHECK(c.server.command_timeout == 5min);
  CHECK(c.server.data_timeout == 30s);
  CHECK(c.server.max_session_time == 1h);
  CHECK(c.server.bare_newline == BareNewline::Normalize);
  CHECK(c.server.max_recipients == 1000);
  // Relay domains: lower case, no trailing dot (RelayConfig's contract).
  CHECK(c.relay.domains ==
        std::vector<std::string>{"example.test", ".sub.example.test", "[192.0.2.1]"});
  REQUIRE(c.relay.trusted_networks.size() == 4);
  CHECK(c.relay.trusted_networks[0].to_string() == "192.0.2.0/24");
  CHECK(c.relay.trusted_networks[1].to_string() == "2001:db8::/32");
  CHECK(c.decider.reject_score == 20);
  CHECK(c.decider.quarantine_score == 7.5);
  CHECK(c.decider.scores.size() == 2);
  CHECK(c.decider.scores.at("spf.fail") == 4);
  CHECK(c.decider.scores.at("rule.phish_url") == 12.5);
  CHECK(c.rules.dir.empty());
}

TEST_CASE("sizes accept bytes or a binary K/M/G suffix") {
  struct Row {
    std::string value;  // TOML value text
    bool ok;
    std::uint64_t bytes;
  };
  // clang-format off
  const Row rows[] = {
    {"\"25M\"", true, 25ull << 20},
    {"\"512K\"", true, 512ull << 10},
    {"\"1G\"", true, 1ull << 30},
    {"\"1000\"", true, 1000},
    {"26214400", true, 26214400},
    {"1", true, 1},
    {"0", false, 0},
    {"-5", false, 0},
    {"\"0M\"", false, 0},
    {"\"25MB\"", false, 0},
    {"\"25 M\"", false, 0},
    {"\"1.5M\"", false, 0},
    {"\"M\"", false, 0},
    {"\"\"", false, 0},
    {"\"25T\"", false, 0},
    {"\"-1K\"", false, 0},
    {"\"99999999999999999999G\"", false, 0},   // the number overflows 64 bits
    {"\"17179869184G\"", false, 0},            // 2^34 GiB = 2^64 octets: the product overflows
    {"true", false, 0},
    {"2.5", false, 0},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.value);
    std::string text = std::string(kBase) + "[server]\nmax_message_size = " + row.value + "\n";
    auto r = load_config_text(text, "size.toml");
    CHECK(r.ok() == row.ok);
    if (r.ok() && row.ok) CHECK(r->server.max_message_size == row.bytes);
    if (!r.ok() && !row.ok) {
      CAPTURE(r.error().message);
      auto errors = error_lines(r.error().message);
      CHECK(errors.size() == 1);
      CHECK(has_error(errors, "size.toml", kBaseLines + 2, "max_message_size"));
    }
  }
}

TEST_CASE("durations accept seconds or an s/m/h suffix, up to 7 days") {
  struct Row {
    std::string value;
    bool ok;
    std::chrono::seconds duration;
  };
  // clang-format off
  const Row rows[] = {
    {"\"5m\"", true, 300s},
    {"\"30s\"", true, 30s},
    {"\"1h\"", true, 3600s},
    {"\"168h\"", true, 168h},          // exactly 7 days
    {"\"90\"", true, 90s},
    {"120", true, 120s},
    {"604800", true, 604800s},
    {"604801", false, 0s},
    {"\"169h\"", false, 0s},
    {"0", false, 0s},
    {"\"0s\"", false, 0s},
    {"-5", false, 0s},
    {"\"5x\"", false, 0s},
    {"\"5 m\"", false, 0s},
    {"\"5min\"", false, 0s},
    {"\"m\"", false, 0s},
    {"\"\"", false, 0s},
    {"1.5", false, 0s},
    {"false", false, 0s},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.value);
    std::string text = std::string(kBase) + "[server]\ncommand_timeout = " + row.value + "\n";
    auto r = load_config_text(text, "dur.toml");
    CHECK(r.ok() == row.ok);
    if (r.ok() && row.ok) CHECK(r->server.command_timeout == row.duration);
    if (!r.ok() && !row.ok) {
      CAPTURE(r.error().message);
      auto errors = error_lines(r.error().message);
      CHECK(errors.size() == 1);
      CHECK(has_error(errors, "dur.toml", kBaseLines + 2, "command_timeout"));
    }
  }
}

TEST_CASE("listen entries: queue by default, proxy per listener with its backend route") {
  std::string text = std::string(kBase) + R"(
[server]
listen = ["127.0.0.1:25", { address = "[::1]:26", mode = "proxy", proxy_timeout = "20s" }]
[[route]]
domains = ["example.test"]
host = "127.0.0.1:10025"
[[route]]
domains = ["*"]
host = "127.0.0.1:10026"
)";
  auto r = load_config_text(text, "l.toml");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  REQUIRE(r->server.listen.size() == 2);
  CHECK(r->server.listen[0].mode == ListenerMode::Queue);
  CHECK(r->server.listen[1].mode == ListenerMode::Proxy);
  CHECK(r->server.listen[1].address.to_string() == "[::1]:26");
  CHECK(r->server.listen[1].proxy_timeout == std::chrono::seconds(20));
  REQUIRE(r->proxy_route() != nullptr);
  CHECK(r->proxy_route()->hosts[0].port == 10026);  // the default route, not the first one
}

TEST_CASE("callout needs a route for every relay domain") {
  std::string ok = std::string(kBase) + R"(
[[route]]
domains = ["*"]
host = "127.0.0.1:10025"
)";
  auto with_callout = [](std::string text) {
    auto pos = text.find("[relay]\n");
    return text.insert(pos + 8, "callout = true\ncallout_negative_ttl = \"10m\"\n");
  };
  auto r = load_config_text(with_callout(ok), "c.toml");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->relay.callout);
  CHECK(r->relay.callout_negative_ttl == std::chrono::minutes(10));
  CHECK(r->relay.callout_positive_ttl == std::chrono::hours(24));
  auto bad = load_config_text(with_callout(std::string(kBase)), "c.toml");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("has no [[route]] to ask") != std::string::npos);
}

TEST_CASE("each unknown key or bad value is one error naming its exact line") {
  struct Row {
    std::string snippet;  // appended after kBase; its first line is kBaseLines + 1
    int line;             // the line the error must name
    std::string needle;   // what the reason must mention
  };
  // clang-format off
  const Row rows[] = {
    // Unknown keys, at every level.
    {"[server]\nlisten = [\"127.0.0.1:2525\"]\nbogus = 1\n", kBaseLines + 3, "bogus"},
    {"\nlisten_port = 25\n[server]\n", kBaseLines + 2, "listen_port"},   // inside kBase's [relay]
    {"[tls]\nmin_version = \"1.3\"\nciphers = \"x\"\n", kBaseLines + 3, "ciphers"},
    {"[decider]\n\nreject = 5\n", kBaseLines + 3, "reject"},
    {"[[route]]\ndomains = [\"example.test\"]\nhost = \"127.0.0.1:10025\"\nport = 25\n", kBaseLines + 4, "port"},
    {"[server.limits]\nx = 1\n", kBaseLines + 1, "limits"},
    // Bad values in [server].
    {"[server]\nhostname = \"bad host\"\n", kBaseLines + 2, "bad host"},
    {"[server]\nhostname = 5\n", kBaseLines + 2, "hostname"},
    {"[server]\nlisten = [\"localhost:25\"]\n", kBaseLines + 2, "localhost:25"},
    {"[server]\nlisten = [\"127.0.0.1\"]\n", kBaseLines + 2, "127.0.0.1"},
    {"[server]\nlisten = [\"127.0.0.1:0\"]\n", kBaseLines + 2, "127.0.0.1:0"},
    {"[server]\nlisten = [\"127.0.0.1:65536\"]\n", kBaseLines + 2, "127.0.0.1:65536"},
    {"[server]\nlisten = []\n", kBaseLines + 2, "listen"},
    {"[server]\nlisten = \"127.0.0.1:25\"\n", kBaseLines + 2, "listen"},
    {"[server]\nlisten = [25]\n", kBaseLines + 2, "listen"},
    {"[server]\nlisten = [{ address = \"127.0.0.1:25\", mode = \"relay\" }]\n", kBaseLines + 2, "mode"},
    {"[server]\nlisten = [{ address = \"127.0.0.1:25\", timeout = 5 }]\n", kBaseLines + 2, "timeout"},
    {"[server]\nlisten = [{ address = \"127.0.0.1\" }]\n", kBaseLines + 2, "127.0.0.1"},
    {"[server]\nlisten = [{ address = \"127.0.0.1:25\", proxy_timeout = \"soon\" }]\n", kBaseLines + 2, "proxy_timeout"},
    // A proxy listener with no route to be its backend.
    {"[server]\nlisten = [\"127.0.0.1:25\",\n  { address = \"127.0.0.1:26\", mode = \"proxy\" }]\n", kBaseLines + 2, "proxy listener needs a backend"},
    {"[server]\nmax_recipients = 0\n", kBaseLines + 2, "max_recipients"},
    {"[server]\nmax_recipients = \"100\"\n", kBaseLines + 2, "max_recipients"},
    {"[server]\nmax_sessions = -1\n", kBaseLines + 2, "max_sessions"},
    {"[server]\nmax_line_length = 999\n", kBaseLines + 2, "max_line_length"},   // RFC 5321 minimum is 1000
    {"[server]\nbare_newline = \"allow\"\n", kBaseLines + 2, "bare_newline"},
    {"[server]\nspool_dir = 1\n", kBaseLines + 2, "spool_dir"},
    // A section that is not a table.
    {"[tls]\n[decider]\nscores = { a = 1 }\n[[server]]\nx = 1\n", kBaseLines + 4, "server"},
    // [tls].
    {"[tls]\nmin_version = \"1.1\"\n", kBaseLines + 2, "min_version"},
    {"[tls]\nrequire = \"yes\"\n", kBaseLines + 2, "require"},
    {"[tls]\ncert = \"/nonexistent/moat-test/cert.pem\"\nkey = \"/nonexistent/moat-test/key.pem\"\n", kBaseLines + 2, "/nonexistent/moat-test/cert.pem"},
    {"[tls]\ncert = \"/nonexistent/moat-test/cert.pem\"\nkey = \"/nonexistent/moat-test/key.pem\"\n", kBaseLines + 3, "/nonexistent/moat-test/key.pem"},
    // [relay]: after kBase's [relay] table a second one is a TOML error, so use dotted keys.
    {"[server]\n[relay.x]\n", kBaseLines + 2, "x"},
    // [[route]].
    {"[[route]]\ndomains = [\"example.test\"]\nhost = \"127.0.0.1:10025\"\ntls = \"sometimes\"\n", kBaseLines + 4, "tls"},
    {"[[route]]\ndomains = [\"example.test\"]\nhost = \"mx.example.test:25\"\n", kBaseLines + 3, "mx.example.test:25"},
    {"[[route]]\ndomains = [\"exa mple.test\"]\nhost = \"127.0.0.1:10025\"\n", kBaseLines + 2, "exa mple.test"},
    // [decider].
    {"[decider]\nreject_score = \"high\"\n", kBaseLines + 2, "reject_score"},
    {"[decider]\nscores = 5\n", kBaseLines + 2, "scores"},
    {"[decider.scores]\n\"spf.fail\" = 1\n\"rule.x\" = \"lots\"\n", kBaseLines + 3, "rule.x"},
    // [rules].
    {"[rules]\ndir = \"/nonexistent/moat-test/rules\"\n", kBaseLines + 2, "/nonexistent/moat-test/rules"},
    {"[rules]\ndir = 1\n", kBaseLines + 2, "dir"},
    {"[rules]\ncache_dir = []\n", kBaseLines + 2, "cache_dir"},
    {"[rules]\nreload = true\n", kBaseLines + 2, "reload"},
  };
  // clang-format on
  for (const auto& row : rows) {
    std::string text = std::string(kBase) + row.snippet;
    CAPTURE(text);
    auto r = load_config_text(text, "bad.toml");
    REQUIRE_FALSE(r.ok());
    CAPTURE(r.error().message);
    auto errors = error_lines(r.error().message);
    CHECK(has_error(errors, "bad.toml", row.line, row.needle));
  }
}

TEST_CASE("bad relay entries name the line of the entry, in one-line and multi-line arrays") {
  struct Row {
    std::string relay;  // the [relay] table
    int line;           // 1-based line of the bad entry within `relay`
    std::string needle;
  };
  // clang-format off
  const Row rows[] = {
    {"[relay]\ndomains = [\"example.test\", \"bad..domain\"]\n", 2, "bad..domain"},
    {"[relay]\ndomains = [\n  \"example.test\",\n  \"-bad.test\",\n]\n", 4, "-bad.test"},
    {"[relay]\ndomains = [\"example.test\"]\ntrusted_networks = [\"10.1.2.3/8\"]\n", 3, "10.1.2.3/8"},
    {"[relay]\ndomains = [\"example.test\"]\ntrusted_networks = [\n  \"10.0.0.0/8\",\n  \"192.0.2.0/33\",\n]\n", 5, "192.0.2.0/33"},
    {"[relay]\ndomains = [\"example.test\"]\ntrusted_networks = [\"example.test\"]\n", 3, "example.test"},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.relay);
    auto r = load_config_text(row.relay, "relay.toml");
    REQUIRE_FALSE(r.ok());
    CAPTURE(r.error().message);
    auto errors = error_lines(r.error().message);
    CHECK(errors.size() == 1);
    CHECK(has_error(errors, "relay.toml", row.line, row.needle));
  }
}

TEST_CASE("trusted_networks that would make an open relay are refused") {
  struct Row {
    std::string network;
    bool ok;
  };
  // clang-format off
  const Row rows[] = {
    {"0.0.0.0/0", false},
    {"::/0", false},
    {"0.0.0.0/1", false},
    {"128.0.0.0/1", false},
    {"10.0.0.0/7", false},     // shorter than /8
    {"2000::/3", false},       // most of the IPv6 Internet
    {"2000::/15", false},
    {"10.0.0.0/8", true},      // the shortest allowed IPv4 prefix
    {"2001::/16", true},       // the shortest allowed IPv6 prefix
    {"192.0.2.1", true},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.network);
    std::string text = "[relay]\ndomains = [\"example.test\"]\ntrusted_networks = [\"" +
                       row.network + "\"]\n";
    auto r = load_config_text(text, "open.toml");
    CHECK(r.ok() == row.ok);
    if (!r.ok() && !row.ok) {
      CAPTURE(r.error().message);
      CHECK(has_error(error_lines(r.error().message), "open.toml", 3, row.network));
    }
  }
  // Trusted networks alone (no domains) are still refused when too broad.
  auto r = load_config_text("[relay]\ntrusted_networks = [\"0.0.0.0/0\"]\n", "open.toml");
  REQUIRE_FALSE(r.ok());
  CHECK(has_error(error_lines(r.error().message), "open.toml", 2, "0.0.0.0/0"));
}

TEST_CASE("no relay domains and no trusted networks is an error") {
  auto r = load_config_text("[server]\nmax_recipients = 5\n", "empty.toml");
  REQUIRE_FALSE(r.ok());
  auto errors = error_lines(r.error().message);
  CHECK(errors.size() == 1);
  CHECK(errors[0].rfind("empty.toml:", 0) == 0);
  CHECK(errors[0].find("relay.domains") != std::string::npos);
}

TEST_CASE("several errors are all reported, each with its own line") {
  constexpr std::string_view text =
      "[server]\n"                           // 1
      "max_recipients = 0\n"                 // 2  bad value
      "frobnicate = true\n"                  // 3  unknown key
      "command_timeout = \"5x\"\n"           // 4  bad duration
      "\n"                                   // 5
      "[tls]\n"                              // 6
      "min_version = \"1.0\"\n"              // 7  bad value
      "\n"                                   // 8
      "[relay]\n"                            // 9
      "domains = [\"example.test\"]\n"       // 10
      "trusted_networks = [\"0.0.0.0/0\"]\n" // 11 open relay
      "\n"                                   // 12
      "[decider]\n"                          // 13
      "reject_score = \"x\"\n";              // 14 bad value
  auto r = load_config_text(text, "many.toml");
  REQUIRE_FALSE(r.ok());
  CAPTURE(r.error().message);
  auto errors = error_lines(r.error().message);
  CHECK(errors.size() == 6);
  CHECK(has_error(errors, "many.toml", 2, "max_recipients"));
  CHECK(has_error(errors, "many.toml", 3, "frobnicate"));
  CHECK(has_error(errors, "many.toml", 4, "command_timeout"));
  CHECK(has_error(errors, "many.toml", 7, "min_version"));
  CHECK(has_error(errors, "many.toml", 11, "0.0.0.0/0"));
  CHECK(has_error(errors, "many.toml", 14, "reject_score"));
}

TEST_CASE("a TOML syntax error reports file:line") {
  struct Row {
    std::string text;
    int line;
  };
  // clang-format off
  const Row rows[] = {
    {"[relay]\ndomains = [\"example.test\"]\n\nthis is not toml\n", 4},
    {"[server]\nmax_recipients = 1\nmax_recipients = 2\n[relay]\ndomains = [\"example.test\"]\n", 3},
    {"[relay\ndomains = [\"example.test\"]\n", 1},
    {"[relay]\ndomains = [\"example.test\"]\n[server]\nhostname = \"unterminated\n", 4},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.text);
    auto r = load_config_text(row.text, "syntax.toml");
    REQUIRE_FALSE(r.ok());
    CAPTURE(r.error().message);
    auto errors = error_lines(r.error().message);
    CHECK(errors.size() == 1);  // one line, not toml11's multi-line report
    const std::string prefix = "syntax.toml:" + std::to_string(row.line) + ": ";
    CHECK(errors[0].rfind(prefix, 0) == 0);
    CHECK(errors[0].size() > prefix.size());
  }
}

TEST_CASE("load_config_file names the file in errors") {
  char dir_template[] = "/tmp/moat-config-test-XXXXXX";
  const char* dir = mkdtemp(dir_template);
  REQUIRE(dir != nullptr);
  const std::string path = std::string(dir) + "/moat.toml";
  {
    std::ofstream out(path);
    out << "[relay]\ndomains = [\"example.test\"]\n[server]\nmax_sessions = 0\n";
  }
  auto r = load_config_file(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.rfind(path + ":4: ", 0) == 0);
  {
    std::ofstream out(path);
    out << "[relay]\ndomains = [\"example.test\"]\n= 5\n";
  }
  r = load_config_file(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.rfind(path + ":3: ", 0) == 0);
  {
    std::ofstream out(path);
    out << default_config_text();
  }
  r = load_config_file(path);
  REQUIRE(r.ok());
  CHECK(r->source == path);
  ::unlink(path.c_str());
  auto missing = load_config_file(path);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.rfind(path + ": ", 0) == 0);
  ::rmdir(dir);
}

// --- external scanner plugins ([[scanner]]) ---
TEST_CASE("scanners: values and defaults") {
  std::string text = std::string(kBase) +
                     "[[scanner]]\n"
                     "name = \"clamav\"\n"
                     "endpoint = \"tcp://127.0.0.1:7001\"\n"
                     "timeout = \"3s\"\n"
                     "on_error = \"continue\"\n"
                     "stages = [\"rcpt\", \"data\"]\n"
                     "max_size = \"10M\"\n"
                     "breaker_failures = 3\n"
                     "breaker_cooldown = \"1m\"\n"
                     "[[scanner]]\n"
                     "name = \"filetype\"\n"
                     "endpoint = \"ipc:///run/moat/filetype\"\n"
                     "report_only = true\n";
  auto r = load_config_text(text, "s.toml");
  CAPTURE(r.ok() ? std::string() : r.error().message);
  REQUIRE(r.ok());
  REQUIRE(r->scanners.size() == 2);
  const auto& a = r->scanners[0];
  CHECK(a.name == "clamav");
  CHECK(a.endpoint == "tcp://127.0.0.1:7001");
  CHECK(a.timeout == 3s);
  CHECK(a.on_error == ScannerOnError::Continue);
  CHECK(a.stages == std::vector<Stage>{Stage::RcptTo, Stage::EndOfData});
  CHECK(a.max_size == 10u * 1024 * 1024);
  CHECK(a.breaker_failures == 3);
  CHECK(a.breaker_cooldown == 60s);
  const auto& b = r->scanners[1];
  CHECK(b.on_error == ScannerOnError::TempFail);  // the documented default
  CHECK(b.stages == std::vector<Stage>{Stage::EndOfData});
  CHECK(b.timeout == 10s);
  CHECK(b.report_only);
}

TEST_CASE("scanners: errors name their line") {
  std::string text = std::string(kBase) +
                     "[[scanner]]\n"                                 // 3
                     "name = \"av\"\n"                             // 4
                     "endpoint = \"http://127.0.0.1:7001\"\n"      // 5
                     "on_error = \"ignore\"\n"                     // 6
                     "stages = [\"data\", \"body\"]\n"           // 7
                     "colour = 1\n"                                  // 8
                     "[[scanner]]\n"                                 // 9
                     "name = \"Bad Name\"\n"                       // 10
                     "endpoint = \"tcp://127.0.0.1:7002\"\n"       // 11
                     "timeout = 0\n";                                // 12
  auto r = load_config_text(text, "s.toml");
  REQUIRE_FALSE(r.ok());
  auto errors = error_lines(r.error().message);
  CAPTURE(r.error().message);
  CHECK(has_error(errors, "s.toml", 5, "'endpoint'"));
  CHECK(has_error(errors, "s.toml", 6, "'on_error'"));
  CHECK(has_error(errors, "s.toml", 7, "'body' is not a stage"));
  CHECK(has_error(errors, "s.toml", 8, "unknown key 'colour'"));
  CHECK(has_error(errors, "s.toml", 12, "'timeout'"));
  CHECK(std::any_of(errors.begin(), errors.end(), [](const std::string& e) {
    return e.find("needs a 'name'") != std::string::npos;
  }));
  auto dup = load_config_text(std::string(kBase) +
                                  "[[scanner]]\nname = \"a\"\nendpoint = \"ipc:///x\"\n"
                                  "[[scanner]]\nname = \"a\"\nendpoint = \"ipc:///x\"\n",
                              "d.toml");
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.error().message.find("'a' is used twice") != std::string::npos);
  CHECK(dup.error().message.find("'ipc:///x' is used twice") != std::string::npos);
}
// --- end external scanner plugins ---

}  // namespace
}  // namespace moat::policy

namespace moat::policy {
namespace {

TEST_CASE("routes: several hosts in priority order, parent and default routes, [delivery]") {
  std::string text = std::string(kBase) +
                     "[[route]]\n"
                     "domains = [\"example.test\"]\n"
                     "hosts = [\"127.0.0.1:10025\", \"[::1]:10026\"]\n"
                     "tls = \"required\"\n"
                     "tls_verify = true\n"
                     "tls_server_name = \"mx.internal\"\n"
                     "[[route]]\n"
                     "domains = [\".sub.test\"]\n"
                     "host = \"127.0.0.2:25\"\n"
                     "[[route]]\n"
                     "domains = [\"*\"]\n"
                     "host = \"127.0.0.3:25\"\n"
                     "[delivery]\n"
                     "concurrency = 7\n"
                     "retry_min = \"30s\"\n"
                     "retry_max = 7200\n"
                     "max_lifetime = \"5d\"\n";
  auto r = load_config_text(text, "routes.toml");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  const Config& c = *r;
  REQUIRE(c.routes.size() == 3);
  REQUIRE(c.routes[0].hosts.size() == 2);
  CHECK(c.routes[0].hosts[0].to_string() == "127.0.0.1:10025");
  CHECK(c.routes[0].hosts[1].to_string() == "[::1]:10026");
  CHECK(c.routes[0].tls == RouteTls::Required);
  CHECK(c.routes[0].tls_verify);
  CHECK(c.routes[0].tls_server_name == "mx.internal");
  CHECK(c.delivery.concurrency == 7);
  CHECK(c.delivery.retry_min == 30s);
  CHECK(c.delivery.retry_max == 2h);
  CHECK(c.delivery.max_lifetime == 120h);
  struct Row {
    const char* domain;
    int route;  // index, -1 for none
  };
  for (Row row : {Row{"example.test", 0}, Row{"EXAMPLE.test.", 0}, Row{"sub.test", 1},
                  Row{"a.b.sub.test", 1}, Row{"xsub.test", 2}, Row{"other.example", 2}}) {
    CAPTURE(row.domain);
    const Route* route = c.route_for(row.domain);
    REQUIRE(route != nullptr);
    CHECK(route - c.routes.data() == row.route);
  }
  // Without a default route an unknown domain has none.
  auto plain = load_config_text(std::string(kBase) +
                                    "[[route]]\ndomains = [\"example.test\"]\nhost = \"127.0.0.1:25\"\n",
                                "plain.toml");
  REQUIRE(plain.ok());
  CHECK(plain->route_for("other.example") == nullptr);
}

TEST_CASE("routes: errors name their line") {
  std::string text = std::string(kBase) +
                     "[[route]]\n"                                   // 3
                     "domains = [\"example.test\"]\n"                // 4
                     "host = \"127.0.0.1:25\"\n"                     // 5
                     "hosts = [\"127.0.0.1:26\"]\n"                  // 6
                     "[[route]]\n"                                   // 7
                     "domains = [\"example.test\"]\n"                // 8
                     "hosts = [\"127.0.0.1\"]\n"                     // 9
                     "[delivery]\n"                                  // 10
                     "retry_min = \"2h\"\n"                          // 11
                     "retry_max = \"1m\"\n"                          // 12
                     "bogus = 1\n";                                  // 13
  auto r = load_config_text(text, "r.toml");
  REQUIRE_FALSE(r.ok());
  auto errors = error_lines(r.error().message);
  CAPTURE(r.error().message);
  CHECK(has_error(errors, "r.toml", 5, "either 'host' or 'hosts'"));
  CHECK(has_error(errors, "r.toml", 9, "not ADDRESS:PORT"));
  CHECK(has_error(errors, "r.toml", 13, "unknown key 'bogus'"));
  CHECK(std::any_of(errors.begin(), errors.end(), [](const std::string& e) {
    return e.find("'retry_max' is shorter than 'retry_min'") != std::string::npos;
  }));
}

// --- external scanner plugins ([[scanner]]) ---
TEST_CASE("scanners: values and defaults") {
  std::string text = std::string(kBase) +
                     "[[scanner]]\n"
                     "name = \"clamav\"\n"
                     "endpoint = \"tcp://127.0.0.1:7001\"\n"
                     "timeout = \"3s\"\n"
                     "on_error = \"continue\"\n"
                     "stages = [\"rcpt\", \"data\"]\n"
                     "max_size = \"10M\"\n"
                     "breaker_failures = 3\n"
                     "breaker_cooldown = \"1m\"\n"
                     "[[scanner]]\n"
                     "name = \"filetype\"\n"
                     "endpoint = \"ipc:///run/moat/filetype\"\n"
                     "report_only = true\n";
  auto r = load_config_text(text, "s.toml");
  CAPTURE(r.ok() ? std::string() : r.error().message);
  REQUIRE(r.ok());
  REQUIRE(r->scanners.size() == 2);
  const auto& a = r->scanners[0];
  CHECK(a.name == "clamav");
  CHECK(a.endpoint == "tcp://127.0.0.1:7001");
  CHECK(a.timeout == 3s);
  CHECK(a.on_error == ScannerOnError::Continue);
  CHECK(a.stages == std::vector<Stage>{Stage::RcptTo, Stage::EndOfData});
  CHECK(a.max_size == 10u * 1024 * 1024);
  CHECK(a.breaker_failures == 3);
  CHECK(a.breaker_cooldown == 60s);
  const auto& b = r->scanners[1];
  CHECK(b.on_error == ScannerOnError::TempFail);  // the documented default
  CHECK(b.stages == std::vector<Stage>{Stage::EndOfData});
  CHECK(b.timeout == 10s);
  CHECK(b.report_only);
}

TEST_CASE("scanners: errors name their line") {
  std::string text = std::string(kBase) +
                     "[[scanner]]\n"                                 // 3
                     "name = \"av\"\n"                             // 4
                     "endpoint = \"http://127.0.0.1:7001\"\n"      // 5
                     "on_error = \"ignore\"\n"                     // 6
                     "stages = [\"data\", \"body\"]\n"           // 7
                     "colour = 1\n"                                  // 8
                     "[[scanner]]\n"                                 // 9
                     "name = \"Bad Name\"\n"                       // 10
                     "endpoint = \"tcp://127.0.0.1:7002\"\n"       // 11
                     "timeout = 0\n";                                // 12
  auto r = load_config_text(text, "s.toml");
  REQUIRE_FALSE(r.ok());
  auto errors = error_lines(r.error().message);
  CAPTURE(r.error().message);
  CHECK(has_error(errors, "s.toml", 5, "'endpoint'"));
  CHECK(has_error(errors, "s.toml", 6, "'on_error'"));
  CHECK(has_error(errors, "s.toml", 7, "'body' is not a stage"));
  CHECK(has_error(errors, "s.toml", 8, "unknown key 'colour'"));
  CHECK(has_error(errors, "s.toml", 12, "'timeout'"));
  CHECK(std::any_of(errors.begin(), errors.end(), [](const std::string& e) {
    return e.find("needs a 'name'") != std::string::npos;
  }));
  auto dup = load_config_text(std::string(kBase) +
                                  "[[scanner]]\nname = \"a\"\nendpoint = \"ipc:///x\"\n"
                                  "[[scanner]]\nname = \"a\"\nendpoint = \"ipc:///x\"\n",
                              "d.toml");
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.error().message.find("'a' is used twice") != std::string::npos);
  CHECK(dup.error().message.find("'ipc:///x' is used twice") != std::string::npos);
}
// --- end external scanner plugins ---

}  // namespace
}  // namespace moat::policy

// --- sender authentication: [dkim], [dmarc], [auth] ---
namespace moat::policy {
namespace {

TEST_CASE("[dkim], [dmarc], [auth]: defaults and values") {
  auto d = load_config_text(std::string(kBase) + "[server]\nhostname = \"mx.example.test\"\n",
                            "min.toml");
  REQUIRE_MESSAGE(d.ok(), (d.ok() ? "" : d.error().message));
  CHECK(d->dkim.enabled);
  CHECK(d->dkim.max_signatures == 10);
  CHECK(d->dkim.min_rsa_bits == 1024);
  CHECK(d->dmarc.enabled);
  CHECK(d->dmarc.on_reject == DmarcAction::Reject);
  CHECK(d->dmarc.on_quarantine == DmarcAction::Quarantine);
  CHECK(d->auth.authserv_id == "mx.example.test");  // the host name by default

  auto c = load_config_text(std::string(kBase) +
                                "[dkim]\nenabled = false\nmax_signatures = 3\nmin_rsa_bits = 2048\n"
                                "[dmarc]\nenabled = false\non_reject = \"quarantine\"\n"
                                "on_quarantine = \"none\"\n"
                                "[auth]\nauthserv_id = \"moat.example.test\"\n",
                            "auth.toml");
  REQUIRE_MESSAGE(c.ok(), (c.ok() ? "" : c.error().message));
  CHECK_FALSE(c->dkim.enabled);
  CHECK(c->dkim.max_signatures == 3);
  CHECK(c->dkim.min_rsa_bits == 2048);
  CHECK_FALSE(c->dmarc.enabled);
  CHECK(c->dmarc.on_reject == DmarcAction::Quarantine);
  CHECK(c->dmarc.on_quarantine == DmarcAction::None);
  CHECK(c->auth.authserv_id == "moat.example.test");
}

TEST_CASE("[dkim], [dmarc], [auth]: each bad value names its line") {
  struct Row {
    std::string snippet;
    int line;
    std::string needle;
  };
  const Row rows[] = {
      {"[dkim]\nenabled = 1\n", kBaseLines + 2, "enabled"},
      {"[dkim]\nmax_signatures = 0\n", kBaseLines + 2, "max_signatures"},
      {"[dkim]\nmin_rsa_bits = 512\n", kBaseLines + 2, "min_rsa_bits"},  // RFC 8301
      {"[dkim]\n\nverify = true\n", kBaseLines + 3, "verify"},
      {"[dmarc]\non_reject = \"bounce\"\n", kBaseLines + 2, "on_reject"},
      {"[dmarc]\non_quarantine = 1\n", kBaseLines + 2, "on_quarantine"},
      {"[dmarc]\npolicy = \"reject\"\n", kBaseLines + 2, "policy"},
      {"[auth]\nauthserv_id = \"mx example\"\n", kBaseLines + 2, "mx example"},
      {"[auth]\nauthserv_id = \"mx;spf=pass\"\n", kBaseLines + 2, "authserv_id"},
      {"[auth]\nauthserv_id = \"\"\n", kBaseLines + 2, "authserv_id"},
      {"[auth]\nauthserv_id = \"a\\r\\nX: y\"\n", kBaseLines + 2, "authserv_id"},
      {"[auth]\nid = \"x\"\n", kBaseLines + 2, "id"},
      {"dkim = 5\n", kBaseLines + 1, "dkim"},
  };
  for (const auto& row : rows) {
    std::string text = std::string(kBase) + row.snippet;
    CAPTURE(text);
    auto r = load_config_text(text, "bad.toml");
    REQUIRE_FALSE(r.ok());
    CAPTURE(r.error().message);
    CHECK(has_error(error_lines(r.error().message), "bad.toml", row.line, row.needle));
  }
}

}  // namespace
}  // namespace moat::policy
