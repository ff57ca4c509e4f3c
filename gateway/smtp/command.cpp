#include "gateway/smtp/command.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <string>
#include <utility>
#include <vector>

namespace moat::gateway {
namespace {

using policy::Reply;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

Reply syntax(std::string text) { return {501, "5.5.4", std::move(text)}; }

struct Param {
  std::string_view key;
  std::optional<std::string_view> value;
};

// esmtp-param = esmtp-keyword ["=" esmtp-value]; keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
// esmtp-value = 1*(%d33-60 / %d62-126), or UTF-8 when SMTPUTF8 is in force.
std::optional<std::vector<Param>> split_params(std::string_view s, bool utf8) {
  std::vector<Param> out;
  std::size_t i = 0;
  while (i < s.size()) {
    if (s[i] == ' ') {
      ++i;
      continue;
    }
    std::size_t end = s.find(' ', i);
    if (end == std::string_view::npos) end = s.size();
    std::string_view tok = s.substr(i, end - i);
    auto eq = tok.find('=');
    Param p{tok.substr(0, eq), std::nullopt};
    if (p.key.empty() || !std::isalnum(static_cast<unsigned char>(p.key[0]))) return std::nullopt;
    for (char c : p.key)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return std::nullopt;
    if (eq != std::string_view::npos) {
      p.value = tok.substr(eq + 1);
      if (p.value->empty()) return std::nullopt;
      for (unsigned char c : *p.value)
        if (c == '=' || c < 33 || c == 127 || (c >= 128 && !utf8)) return std::nullopt;
    }
    out.push_back(p);
    i = end;
  }
  return out;
}

// Splits "FROM:<path> params" into the path text and the parameter text. Tolerates spaces after
// the colon, as most servers do; the path itself must be bracketed. nullopt when the keyword is
// missing or text follows the path without a space (a command syntax error); an empty path when
// no complete bracketed path follows the keyword, so that parse_path() refuses it as an address
// syntax error (5.1.7 / 5.1.3, RFC 3463) like any other malformed path.
std::optional<std::pair<std::string_view, std::string_view>> split_path(std::string_view args,
                                                                        std::string_view kw) {
  if (!istarts_with(args, kw)) return std::nullopt;
  args.remove_prefix(kw.size());
  while (!args.empty() && args.front() == ' ') args.remove_prefix(1);
  std::size_t len = policy::path_length(args);
  if (len == std::string_view::npos) return std::pair{std::string_view{}, std::string_view{}};
  std::string_view rest = args.substr(len);
  if (!rest.empty() && rest.front() != ' ') return std::nullopt;
  return std::pair{args.substr(0, len), rest};
}

bool seen(std::vector<std::string_view>& keys, std::string_view key) {
  for (auto k : keys)
    if (iequals(k, key)) return true;
  keys.push_back(key);
  return false;
}

Reply path_error(const policy::ParsedPath& p, bool sender) {
  if (p.error == policy::PathError::NeedsUtf8) return {553, "5.6.7", p.reason};
  return {501, sender ? "5.1.7" : "5.1.3",
          std::string(sender ? "Bad sender address syntax: " : "Bad recipient address syntax: ") +
              p.reason};
}

}  // namespace

Command parse_command(std::string_view line) {
  static constexpr std::array<std::pair<std::string_view, Verb>, 13> kVerbs{{
      {"EHLO", Verb::Ehlo}, {"HELO", Verb::Helo}, {"MAIL", Verb::Mail}, {"RCPT", Verb::Rcpt},
      {"DATA", Verb::Data}, {"BDAT", Verb::Bdat}, {"RSET", Verb::Rset}, {"NOOP", Verb::Noop},
      {"QUIT", Verb::Quit}, {"VRFY", Verb::Vrfy}, {"EXPN", Verb::Expn}, {"HELP", Verb::Help},
      {"STARTTLS", Verb::StartTls},
  }};
  std::size_t sp = line.find(' ');
  std::string_view verb = line.substr(0, sp);
  Command cmd;
  for (auto [name, v] : kVerbs)
    if (iequals(verb, name)) cmd.verb = v;
  if (sp != std::string_view::npos) cmd.args = line.substr(sp + 1);
  return cmd;
}

bool valid_xtext(std::string_view s) {
  if (s.empty()) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    unsigned char c = s[i];
    if (c == '+') {
      if (i + 2 >= s.size()) return false;
      for (int k = 1; k <= 2; ++k) {
        char h = s[i + k];
        if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F'))) return false;
      }
      i += 2;
    } else if (c < 33 || c > 126 || c == '=') {
      return false;
    }
  }
  return true;
}

std::optional<Reply> parse_mail(std::string_view args, std::uint64_t max_size,
                                policy::Envelope& env) {
  auto parts = split_path(args, "FROM:");
  if (!parts) return Reply{501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]"};
  // Parameters first: SMTPUTF8 decides whether a UTF-8 path is allowed.
  auto params = split_params(parts->second, true);
  if (!params) return syntax("Syntax error in MAIL parameters");
  policy::Envelope e;
  std::vector<std::string_view> keys;
  for (const auto& p : *params) {
    if (seen(keys, p.key)) return syntax("Duplicate MAIL parameter " + policy::ascii_upper(p.key));
    std::string key = policy::ascii_upper(p.key);
    if (key == "SIZE") {
      std::uint64_t n = 0;
      if (!p.value || p.value->size() > 20) return syntax("Bad SIZE parameter");
      auto [end, ec] = std::from_chars(p.value->data(), p.value->data() + p.value->size(), n);
      if (ec == std::errc::result_out_of_range) n = UINT64_MAX;
      else if (ec != std::errc() || end != p.value->data() + p.value->size())
        return syntax("Bad SIZE parameter");
      if (n > max_size) return Reply{552, "5.3.4", "Message size exceeds fixed maximum message size"};
      e.declared_size = n;
    } else if (key == "BODY") {
      std::string body = p.value ? policy::ascii_upper(*p.value) : "";
      if (body != "7BIT" && body != "8BITMIME") return Reply{501, "5.5.4", "Unsupported BODY type"};
      e.body = body;
    } else if (key == "SMTPUTF8") {
      if (p.value) return syntax("SMTPUTF8 takes no value");
      e.smtputf8 = true;
    } else if (key == "RET") {
      std::string ret = p.value ? policy::ascii_upper(*p.value) : "";
      if (ret != "FULL" && ret != "HDRS") return syntax("RET must be FULL or HDRS");
      e.ret = ret;
    } else if (key == "ENVID") {
      if (!p.value || p.value->size() > 100 || !valid_xtext(*p.value))
        return syntax("Bad ENVID parameter");
      e.envid = std::string(*p.value);
    } else {
      return Reply{555, "5.5.4", "Unsupported MAIL parameter " + key};
    }
  }
  for (unsigned char c : parts->second)
    if (c >= 128 && !e.smtputf8) return syntax("Non-ASCII MAIL parameter requires SMTPUTF8");
  auto path = policy::parse_path(parts->first, e.smtputf8);
  if (!path.ok()) return path_error(path, true);
  if (path.path.postmaster) return Reply{501, "5.1.7", "Bad sender address syntax: no domain"};
  e.sender = std::move(path.path);
  env = std::move(e);
  return std::nullopt;
}

std::optional<Reply> parse_rcpt(std::string_view args, bool smtputf8, policy::Recipient& rcpt) {
  auto parts = split_path(args, "TO:");
  if (!parts) return Reply{501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]"};
  auto params = split_params(parts->second, smtputf8);
  if (!params) return syntax("Syntax error in RCPT parameters");
  policy::Recipient r;
  std::vector<std::string_view> keys;
  for (const auto& p : *params) {
    if (seen(keys, p.key)) return syntax("Duplicate RCPT parameter " + policy::ascii_upper(p.key));
    std::string key = policy::ascii_upper(p.key);
    if (key == "NOTIFY") {
      if (!p.value) return syntax("Bad NOTIFY parameter");
      std::string v = policy::ascii_upper(*p.value);
      if (v != "NEVER") {
        std::vector<std::string_view> items;
        std::string_view rest = v;
        while (true) {
          auto comma = rest.find(',');
          auto item = rest.substr(0, comma);
          if ((item != "SUCCESS" && item != "FAILURE" && item != "DELAY") || seen(items, item))
            return syntax("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY");
          if (comma == std::string_view::npos) break;
          rest.remove_prefix(comma + 1);
        }
      }
      r.notify = v;
    } else if (key == "ORCPT") {
      // ORCPT=addr-type ";" xtext (RFC 3461 §4.2); utf-8-addr-xtext with SMTPUTF8 (RFC 6533).
      auto semi = p.value ? p.value->find(';') : std::string_view::npos;
      if (semi == std::string_view::npos || semi == 0 || p.value->size() > 500)
        return syntax("Bad ORCPT parameter");
      auto type = policy::ascii_upper(p.value->substr(0, semi));
      auto addr = p.value->substr(semi + 1);
      bool ok = type == "RFC822" ? valid_xtext(addr) : (type == "UTF-8" && smtputf8 && !addr.empty());
      if (!ok) return syntax("Bad ORCPT parameter");
      r.orcpt = std::string(*p.value);
    } else {
      return Reply{555, "5.5.4", "Unsupported RCPT parameter " + key};
    }
  }
  auto path = policy::parse_path(parts->first, smtputf8);
  if (!path.ok()) return path_error(path, false);
  if (path.path.null) return Reply{501, "5.1.3", "Bad recipient address syntax: empty address"};
  r.path = std::move(path.path);
  r.address = r.path.address();
  rcpt = std::move(r);
  return std::nullopt;
}

std::optional<BdatArgs> parse_bdat(std::string_view args) {
  BdatArgs b;
  auto sp = args.find(' ');
  auto num = args.substr(0, sp);
  if (num.empty() || num.size() > 19) return std::nullopt;
  auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), b.size);
  if (ec != std::errc() || end != num.data() + num.size()) return std::nullopt;
  if (sp != std::string_view::npos) {
    if (!iequals(args.substr(sp + 1), "LAST")) return std::nullopt;
    b.last = true;
  }
  return b;
}

}  // namespace moat::gateway
