#include "policy/address.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdint>

namespace moat::policy {
namespace {

bool is_alnum(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// RFC 5322 atext.
bool is_atext(unsigned char c) {
  if (is_alnum(c)) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '/': case '=': case '?': case '^': case '_': case '`': case '{': case '|': case '}':
    case '~':
      return true;
    default:
      return false;
  }
}

}  // namespace

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    int n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xe ? 2 : (c >> 3) == 0x1e ? 3 : -1;
    if (n < 0 || i + n >= s.size() + (n == 0)) return false;
    if (n > 0) {
      std::uint32_t cp = c & (0x3f >> n);
      for (int k = 1; k <= n; ++k) {
        unsigned char cc = s[i + k];
        if ((cc & 0xc0) != 0x80) return false;
        cp = (cp << 6) | (cc & 0x3f);
      }
      // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
      static constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
      if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    }
    i += n + 1;
  }
  return true;
}

std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string ascii_upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return out;
}

bool valid_domain(std::string_view d, bool allow_utf8) {
  if (!d.empty() && d.back() == '.') d.remove_suffix(1);  // a trailing root dot is tolerated
  if (d.empty() || d.size() > 255) return false;
  bool utf8 = false;
  std::size_t start = 0;
  while (start <= d.size()) {
    std::size_t end = d.find('.', start);
    if (end == std::string_view::npos) end = d.size();
    auto label = d.substr(start, end - start);
    if (label.empty() || label.size() > 63) return false;
    for (std::size_t i = 0; i < label.size(); ++i) {
      unsigned char c = label[i];
      if (c >= 0x80) {
        if (!allow_utf8) return false;
        utf8 = true;
        continue;
      }
      // Let-dig [Ldh-str]; "_" is tolerated inside labels because real HELO names carry it.
      bool edge = i == 0 || i + 1 == label.size();
      if (!(is_alnum(c) || (!edge && (c == '-' || c == '_')))) return false;
    }
    start = end + 1;
  }
  return !utf8 || valid_utf8(d);
}

bool valid_address_literal(std::string_view lit) {
  if (lit.size() < 3 || lit.front() != '[' || lit.back() != ']') return false;
  std::string inner(lit.substr(1, lit.size() - 2));
  // inet_pton reads a C string: an embedded NUL would hide whatever follows it.
  if (inner.find('\0') != std::string::npos) return false;
  unsigned char buf[16];
  if (inner.size() > 5 && std::equal(inner.begin(), inner.begin() + 5, "IPv6:",
                                     [](char a, char b) { return (a | 0x20) == (b | 0x20); }))
    return inet_pton(AF_INET6, inner.c_str() + 5, buf) == 1;
  if (inet_pton(AF_INET, inner.c_str(), buf) == 1) return true;
  // General-address-literal = Standardized-tag ":" 1*dcontent
  auto colon = inner.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == inner.size()) return false;
  for (std::size_t i = 0; i < colon; ++i)
    if (!(is_alnum(inner[i]) || inner[i] == '-')) return false;
  for (std::size_t i = colon + 1; i < inner.size(); ++i) {
    unsigned char c = inner[i];
    if (c < 33 || c > 126 || c == '[' || c == ']' || c == '\\') return false;
  }
  return true;
}

std::size_t path_length(std::string_view a) {
  if (a.empty() || a[0] != '<') return std::string_view::npos;
  bool quoted = false;
  for (std::size_t i = 1; i < a.size(); ++i) {
    char c = a[i];
    if (quoted && c == '\\') {
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (!quoted && c == '>') {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

std::string Path::address() const {
  if (null) return "";
  if (postmaster) return mailbox.local;
  return mailbox.address();
}

ParsedPath parse_path(std::string_view text, bool smtputf8) {
  ParsedPath r;
  auto fail = [&](PathError e, std::string why) {
    r.error = e;
    r.reason = std::move(why);
    return r;
  };
  if (text.size() < 2 || text.front() != '<' || text.back() != '>')
    return fail(PathError::Syntax, "address must be enclosed in <>");
  std::string_view s = text.substr(1, text.size() - 2);
  if (s.empty()) {
    r.path.null = true;
    return r;
  }
  bool non_ascii = std::any_of(s.begin(), s.end(), [](char c) { return (unsigned char)c >= 0x80; });
  if (non_ascii) {
    if (!smtputf8) return fail(PathError::NeedsUtf8, "non-ASCII address requires SMTPUTF8");
    if (!valid_utf8(s)) return fail(PathError::Syntax, "address is not valid UTF-8");
    r.path.utf8 = true;
  }
  for (unsigned char c : s)
    if (c < 32 || c == 127) return fail(PathError::Syntax, "control character in address");

  // A-d-l ":" — source route, RFC 5321 §4.1.2 / appendix C. Parsed so it can be refused or
  // ignored, never followed.
  if (s.front() == '@') {
    auto colon = s.find(':');
    if (colon == std::string_view::npos) return fail(PathError::Syntax, "bad source route");
    auto route = s.substr(0, colon);
    std::size_t start = 0;
    while (true) {  // every hop, including an empty one after a trailing ","
      auto end = route.find(',', start);
      if (end == std::string_view::npos) end = route.size();
      auto hop = route.substr(start, end - start);
      if (hop.size() < 2 || hop[0] != '@' || !valid_domain(hop.substr(1), smtputf8))
        return fail(PathError::Syntax, "bad source route");
      if (end == route.size()) break;
      start = end + 1;
    }
    r.path.source_route = true;
    s = s.substr(colon + 1);
  }

  Mailbox& m = r.path.mailbox;
  std::size_t i = 0;
  if (!s.empty() && s[0] == '"') {
    m.quoted = true;
    for (i = 1; i < s.size() && s[i] != '"'; ++i) {
      unsigned char c = s[i];
      if (c == '\\') {
        if (++i >= s.size()) return fail(PathError::Syntax, "bad quoted local part");
        c = s[i];
        if (c < 32 || c > 126) return fail(PathError::Syntax, "bad quoted pair");
      } else if (c < 32 || c == 127) {
        return fail(PathError::Syntax, "bad quoted local part");
      }
      m.local_value.push_back(static_cast<char>(c));
    }
    if (i >= s.size()) return fail(PathError::Syntax, "unterminated quoted local part");
    ++i;  // closing quote
  } else {
    // Dot-string, leniently: leading, trailing and doubled dots are accepted (as Postfix and
    // most MTAs do) because real senders use them; they carry no routing meaning.
    while (i < s.size() && s[i] != '@') {
      unsigned char c = s[i];
      if (!(is_atext(c) || c == '.' || c >= 0x80))
        return fail(PathError::Syntax, "invalid character in local part");
      ++i;
    }
    m.local_value = std::string(s.substr(0, i));
  }
  m.local = std::string(s.substr(0, i));

  if (i == s.size()) {
    // RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
    if (!m.quoted && !r.path.source_route && m.local.size() == 10) {
      std::string lower = m.local;
      std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
      if (lower == "postmaster") {
        r.path.postmaster = true;
        return r;
      }
    }
    return fail(PathError::Syntax, "address has no domain");
  }
  if (s[i] != '@' || i == 0) return fail(PathError::Syntax, "bad local part");
  m.domain = std::string(s.substr(i + 1));
  if (!m.domain.empty() && m.domain.front() == '[') {
    if (!valid_address_literal(m.domain)) return fail(PathError::Syntax, "bad address literal");
    m.literal = true;
  } else if (!valid_domain(m.domain, smtputf8)) {
    return fail(PathError::Syntax, "bad domain");
  }
  return r;
}

}  // namespace moat::policy
