#include "gateway/spool/envelope.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <iterator>
#include <optional>

namespace moat::gateway {
namespace {

constexpr std::string_view kMagic = "moat-envelope 1";
constexpr std::string_view kStateNames[] = {"pending", "delivered", "failed"};

template <class T>
bool parse_number(const std::string& s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

// Escapes every octet that could break the line/field structure.
std::string esc(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c < 0x21 || c == 0x7f || c == '%') out += fmt::format("%{:02X}", c);
    else out.push_back(static_cast<char>(c));
  }
  return out;
}

std::optional<std::string> unesc(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    unsigned v = 0;
    if (i + 2 >= s.size()) return std::nullopt;
    auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
    if (ec != std::errc() || p != s.data() + i + 3) return std::nullopt;
    out.push_back(static_cast<char>(v));
    i += 2;
  }
  return out;
}

}  // namespace

std::string serialize(const SpoolEnvelope& e) {
  std::string out = std::string(kMagic) + "\n";
  auto line = [&](std::string_view key, std::string_view value) {
    out += fmt::format("{} {}\n", key, esc(value));
  };
  line("qid", e.qid);
  line("arrival", std::to_string(e.arrival));
  line("client", e.client_ip);
  line("helo", e.helo);
  line("protocol", e.protocol);
  if (!e.tls.empty()) line("tls", e.tls);
  line("from", e.sender);
  if (!e.body.empty()) line("body", e.body);
  if (e.smtputf8) line("smtputf8", "1");
  if (!e.ret.empty()) line("ret", e.ret);
  if (!e.envid.empty()) line("envid", e.envid);
  for (const auto& r : e.recipients) {
    out += fmt::format("rcpt {} {} {}", esc(r.address), esc(r.notify), esc(r.orcpt));
    if (r.state != SpoolRecipient::State::Pending || !r.diagnostic.empty())
      out += fmt::format(" {} {}", kStateNames[static_cast<int>(r.state)], esc(r.diagnostic));
    out += '\n';
  }
  line("message_size", std::to_string(e.message_size));
  if (e.attempts) line("attempts", std::to_string(e.attempts));
  if (e.next_attempt) line("next_attempt", std::to_string(e.next_attempt));
  if (!e.last_error.empty()) line("last_error", e.last_error);
  for (const auto& [name, value] : e.add_headers)
    out += fmt::format("header {} {}\n", esc(name), esc(value));
  for (const auto& r : e.remove_headers)
    out += fmt::format("unheader {} {}\n", esc(r.name), r.occurrence);
  return out;
}

Result<SpoolEnvelope> parse_envelope(std::string_view text) {
  auto bad = [](std::string why) { return Result<SpoolEnvelope>::fail(std::move(why)); };
  if (text.substr(0, kMagic.size() + 1) != std::string(kMagic) + "\n")
    return bad("not a Moat envelope");
  text.remove_prefix(kMagic.size() + 1);
  SpoolEnvelope e;
  while (!text.empty()) {
    auto nl = text.find('\n');
    if (nl == std::string_view::npos) return bad("truncated envelope");
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    // Split into space-separated escaped fields; empty fields are "" (two spaces in a row).
    std::vector<std::string> f;
    std::size_t start = 0;
    while (true) {
      auto sp = line.find(' ', start);
      auto v = unesc(line.substr(start, sp == std::string_view::npos ? sp : sp - start));
      if (!v) return bad("bad escape in envelope");
      f.push_back(*v);
      if (sp == std::string_view::npos) break;
      start = sp + 1;
    }
    const std::string& key = f[0];
    auto want = [&](std::size_t n) { return f.size() == n + 1; };
    if (key == "rcpt" && (want(3) || want(5))) {
      SpoolRecipient r;
      r.address = f[1];
      r.notify = f[2];
      r.orcpt = f[3];
      if (want(5)) {
        auto it = std::find(std::begin(kStateNames), std::end(kStateNames), f[4]);
        if (it == std::end(kStateNames)) return bad("bad recipient state: " + f[4]);
        r.state = static_cast<SpoolRecipient::State>(it - std::begin(kStateNames));
        r.diagnostic = f[5];
      }
      e.recipients.push_back(std::move(r));
    } else if (key == "header" && want(2)) {
      e.add_headers.emplace_back(f[1], f[2]);
    } else if (key == "unheader" && want(2)) {
      std::size_t n = 0;
      if (!parse_number(f[2], n)) return bad("bad unheader occurrence");
      e.remove_headers.push_back({f[1], n});
    } else if (!want(1)) {
      return bad("malformed envelope line: " + key);
    } else if (key == "qid") e.qid = f[1];
    else if (key == "arrival") {
      if (!parse_number(f[1], e.arrival)) return bad("bad arrival time");
    } else if (key == "message_size") {
      if (!parse_number(f[1], e.message_size)) return bad("bad message_size");
    } else if (key == "attempts") {
      if (!parse_number(f[1], e.attempts)) return bad("bad attempts");
    } else if (key == "next_attempt") {
      if (!parse_number(f[1], e.next_attempt)) return bad("bad next_attempt");
    } else if (key == "last_error") e.last_error = f[1]; else if (key == "client") e.client_ip = f[1];
    else if (key == "helo") e.helo = f[1];
    else if (key == "protocol") e.protocol = f[1];
    else if (key == "tls") e.tls = f[1];
    else if (key == "from") e.sender = f[1];
    else if (key == "body") e.body = f[1];
    else if (key == "smtputf8") e.smtputf8 = f[1] == "1";
    else if (key == "ret") e.ret = f[1];
    else if (key == "envid") e.envid = f[1];
    else return bad("unknown envelope key: " + key);
  }
  if (e.qid.empty()) return bad("envelope has no qid");
  if (e.recipients.empty()) return bad("envelope has no recipients");
  return e;
}

}  // namespace moat::gateway
