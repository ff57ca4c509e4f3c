#include "auth/auth_results.hpp"

#include <fmt/format.h>

#include "policy/address.hpp"

namespace moat::auth {
namespace {

bool is_tspecial(char c) {
  return std::string_view("()<>@,;:\\\"/[]?=").find(c) != std::string_view::npos;
}
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (c <= 0x20 || c >= 0x7f || is_tspecial(static_cast<char>(c))) return false;
  return true;
}
// A domain-name pvalue as RFC 8601 allows it unquoted (letters, digits, '-', '.').
bool is_plain_domain(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '-' || c == '.'))
      return false;
  return true;
}
// RFC 5322 dot-atom local part.
bool is_dot_atom(std::string_view s) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  for (char c : s) {
    bool atext = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 std::string_view("!#$%&'*+-/=?^_`{|}~.").find(c) != std::string_view::npos;
    if (!atext) return false;
  }
  return s.find("..") == std::string_view::npos;
}

char safe(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  return (u < 0x20 || u >= 0x7f) ? '?' : c;  // CR, LF, TAB, controls, non-ASCII
}

// A pvalue: local@domain or domain unquoted when they are plain, else a quoted-string.
std::string pvalue(std::string_view s) {
  auto at = s.rfind('@');
  if (at == std::string_view::npos ? is_plain_domain(s)
                                   : is_dot_atom(s.substr(0, at)) && is_plain_domain(s.substr(at + 1)))
    return std::string(s);
  return ar_value(s);
}

void skip_cfws(std::string_view v, std::size_t& i) {
  int depth = 0;
  while (i < v.size()) {
    char c = v[i];
    if (depth) {
      if (c == '\\') ++i;
      else if (c == '(') ++depth;
      else if (c == ')') --depth;
      ++i;
    } else if (c == '(') {
      depth = 1;
      ++i;
    } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      ++i;
    } else {
      return;
    }
  }
}

}  // namespace

std::string ar_value(std::string_view s) {
  if (is_token(s)) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    c = safe(c);
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string ar_comment(std::string_view s) {
  std::string out = "(";
  for (char c : s) {
    c = safe(c);
    if (c == '(' || c == ')' || c == '\\') out += '\\';
    out += c;
  }
  return out + ")";
}

std::string build_authentication_results(std::string_view authserv_id,
                                         const policy::AuthResults& auth,
                                         const AuthIdentities& ids) {
  std::vector<std::string> parts;
  if (!auth.spf_result.empty()) {
    std::string p = "spf=";  // appended: GCC 12 -O2 false -Wrestrict on "x" + string&&
    p += ar_value(auth.spf_result);
    if (!ids.mail_from.empty()) {
      // smtp.mailfrom: the whole address when it is plain, else only its domain.
      auto at = ids.mail_from.rfind('@');
      std::string local = at == std::string::npos ? "" : ids.mail_from.substr(0, at);
      std::string domain = at == std::string::npos ? ids.mail_from : ids.mail_from.substr(at + 1);
      p.append(" smtp.mailfrom=").append(is_dot_atom(local) ? pvalue(ids.mail_from) : pvalue(domain));
    } else {
      p.append(" smtp.helo=").append(pvalue(ids.helo));
    }
    parts.push_back(std::move(p));
  }
  if (auth.dkim_checked) {
    if (auth.dkim.empty()) parts.push_back("dkim=none");
    for (const auto& d : auth.dkim) {
      std::string p = "dkim=";  // appended: GCC 12 -O2 false -Wrestrict on "x" + string&&
      p += ar_value(d.result);
      if (!d.reason.empty() || d.testing) {
        std::string why = d.reason;
        if (d.testing) why.append(why.empty() ? "test mode" : "; test mode");
        p.append(" ").append(ar_comment(why));
      }
      if (!d.domain.empty()) p.append(" header.d=").append(pvalue(d.domain));
      if (!d.selector.empty()) p.append(" header.s=").append(ar_value(d.selector));
      if (!d.header_b.empty()) p.append(" header.b=").append(ar_value(d.header_b));
      parts.push_back(std::move(p));
    }
  }
  if (!auth.dmarc_result.empty()) {
    std::string p = "dmarc=";  // appended: GCC 12 -O2 false -Wrestrict on "x" + string&&
    p += ar_value(auth.dmarc_result);
    if (!auth.dmarc_policy.empty() && auth.dmarc_result == "fail")
      p.append(" ").append(ar_comment(std::string("p=").append(auth.dmarc_policy)));
    if (!auth.dmarc_domain.empty()) p.append(" header.from=").append(pvalue(auth.dmarc_domain));
    parts.push_back(std::move(p));
  }
  std::string out(authserv_id);
  if (parts.empty()) return out + "; none";
  for (std::size_t i = 0; i < parts.size(); ++i) out += ";\r\n\t" + parts[i];
  return out;
}

std::string authserv_id_of(std::string_view v) {
  std::size_t i = 0;
  skip_cfws(v, i);
  if (i >= v.size()) return "";
  std::string id;
  if (v[i] == '"') {
    for (++i; i < v.size() && v[i] != '"'; ++i) {
      if (v[i] == '\\' && i + 1 < v.size()) ++i;
      id += v[i];
    }
    return id;
  }
  while (i < v.size()) {
    unsigned char c = static_cast<unsigned char>(v[i]);
    if (c <= 0x20 || c == ';' || c == '(' ) break;
    id += static_cast<char>(c);
    ++i;
  }
  return id;
}

std::vector<policy::HeaderRemoval> forged_authentication_results(std::string_view message,
                                                                 std::string_view authserv_id) {
  std::vector<policy::HeaderRemoval> out;
  policy::HeaderSection h = policy::split_header(message);
  std::string want = policy::ascii_lower(authserv_id);
  std::size_t n = 0;
  for (const auto& f : h.fields) {
    if (!policy::field_name_is(f.name, kAuthResultsField)) continue;
    if (policy::ascii_lower(authserv_id_of(f.value)) == want)
      out.push_back({std::string(kAuthResultsField), n});
    ++n;
  }
  return out;
}

asio::awaitable<policy::Verdict> AuthResultsCheck::run(policy::Stage, policy::MessageContext& ctx) {
  for (auto& r : forged_authentication_results(ctx.message, authserv_id_))
    ctx.remove_headers.push_back(std::move(r));
  AuthIdentities ids{ctx.envelope.sender.null ? "" : ctx.envelope.sender.address(),
                     ctx.session.helo};
  ctx.add_headers.emplace_back(std::string(kAuthResultsField),
                               build_authentication_results(authserv_id_, ctx.auth, ids));
  co_return policy::Verdict::next();
}

}  // namespace moat::auth
