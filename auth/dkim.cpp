#include "auth/dkim.hpp"

// dkim.h uses _Bool and u_char without including what defines them.
#include <stdbool.h>
#include <sys/types.h>
#include <opendkim/dkim.h>

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

#include "policy/address.hpp"
#include "policy/header_fields.hpp"

namespace moat::auth {
namespace {

// The key records fetched for one message, by lower-case query name. The key-lookup callback
// finds them through the DKIM handle's user context.
struct KeyTable {
  std::map<std::string, DnsResult> answers;
};

std::string key_name(DKIM_SIGINFO* sig) {
  const char* sel = reinterpret_cast<const char*>(dkim_sig_getselector(sig));
  const char* dom = reinterpret_cast<const char*>(dkim_sig_getdomain(sig));
  if (!sel || !dom) return {};
  return policy::ascii_lower(fmt::format("{}._domainkey.{}", sel, dom));
}

// libopendkim asks for a key during dkim_eom(); it only gets what verify() fetched before.
extern "C" DKIM_CBSTAT serve_key(DKIM* dkim, DKIM_SIGINFO* sig, u_char* buf, size_t buflen) {
  auto* table = static_cast<KeyTable*>(dkim_get_user_context(dkim));
  if (!table) return DKIM_CBSTAT_ERROR;
  auto it = table->answers.find(key_name(sig));
  if (it == table->answers.end()) return DKIM_CBSTAT_TRYAGAIN;  // not fetched: never guess
  const DnsResult& r = it->second;
  switch (r.status) {
    case DnsStatus::TempFail: return DKIM_CBSTAT_TRYAGAIN;
    case DnsStatus::NxDomain:
    case DnsStatus::NoData: return DKIM_CBSTAT_NOTFOUND;
    case DnsStatus::Ok: break;
  }
  if (r.records.empty()) return DKIM_CBSTAT_NOTFOUND;
  // RFC 6376 §3.6.2.2: several TXT records make the key ambiguous; use the first (as
  // libopendkim's own resolver does), but one that does not fit the buffer is an error.
  const std::string& txt = r.records.front();
  if (buflen == 0 || txt.size() >= buflen) return DKIM_CBSTAT_ERROR;
  std::memcpy(buf, txt.data(), txt.size());
  buf[txt.size()] = 0;
  return DKIM_CBSTAT_CONTINUE;
}

std::string tag(DKIM_SIGINFO* sig, bool key, const char* name) {
  u_char* v = dkim_sig_gettagvalue(sig, key, reinterpret_cast<u_char*>(const_cast<char*>(name)));
  return v ? reinterpret_cast<const char*>(v) : "";
}

std::string algorithm_name(DKIM_SIGINFO* sig) {
  dkim_alg_t alg = DKIM_SIGN_UNKNOWN;
  dkim_sig_getsignalg(sig, &alg);
  switch (alg) {
    case DKIM_SIGN_RSASHA1: return "rsa-sha1";
    case DKIM_SIGN_RSASHA256: return "rsa-sha256";
    case DKIM_SIGN_ED25519SHA256: return "ed25519-sha256";
    default: return tag(sig, false, "a");
  }
}

// True when the key record's t= flag list (colon-separated, RFC 6376 §3.6.1) holds `flag`.
bool key_flag(DKIM_SIGINFO* sig, char flag) {
  std::string t = tag(sig, true, "t");
  std::size_t start = 0;
  while (start <= t.size()) {
    std::size_t end = t.find(':', start);
    if (end == std::string::npos) end = t.size();
    std::string_view f = std::string_view(t).substr(start, end - start);
    while (!f.empty() && (f.front() == ' ' || f.front() == '\t')) f.remove_prefix(1);
    while (!f.empty() && (f.back() == ' ' || f.back() == '\t')) f.remove_suffix(1);
    if (f.size() == 1 && (f[0] | 0x20) == flag) return true;
    start = end + 1;
  }
  return false;
}

// t=s: the domain of i= (when given) must be d= itself, not a subdomain.
bool strict_identity_ok(DKIM_SIGINFO* sig, const std::string& d) {
  std::string i = tag(sig, false, "i");
  if (i.empty()) return true;
  auto at = i.rfind('@');
  return policy::ascii_lower(at == std::string::npos ? i : i.substr(at + 1)) == d;
}

// The verdict on one signature after dkim_eom(), per the table in dkim.hpp.
void judge(DKIM_SIGINFO* sig, unsigned min_rsa_bits, DkimSignatureResult& out) {
  unsigned flags = dkim_sig_getflags(sig);
  int err = dkim_sig_geterror(sig);
  int bh = dkim_sig_getbh(sig);
  auto set = [&](const char* result, std::string reason) {
    out.result = result;
    out.reason = std::move(reason);
  };
  if ((flags & DKIM_SIGFLAG_PASSED) && bh == DKIM_SIGBH_MATCH) {
    bool rsa = out.algorithm.rfind("rsa-", 0) == 0;
    if (out.algorithm == "rsa-sha1")
      set("permerror", "rsa-sha1 is not acceptable (RFC 8301)");
    else if (rsa && out.key_bits < min_rsa_bits)
      set("permerror", fmt::format("RSA key of {} bits, under {} (RFC 8301)", out.key_bits,
                                   min_rsa_bits));
    else if (key_flag(sig, 's') && !strict_identity_ok(sig, out.domain))
      // libopendkim 2.11 does not enforce t=s itself.
      set("permerror", "i= is a subdomain of d= but the key says t=s");
    else
      set("pass", "");
    return;
  }
  if (bh == DKIM_SIGBH_MISMATCH) {
    set("fail", "body hash mismatch");
    return;
  }
  switch (err) {
    case DKIM_SIGERROR_KEYFAIL: set("temperror", "key lookup failed"); return;
    case DKIM_SIGERROR_NOKEY: set("permerror", "no key published"); return;
    case DKIM_SIGERROR_BADSIG: set("fail", "signature does not verify"); return;
    case DKIM_SIGERROR_KEYREVOKED: set("fail", "key revoked (empty p=)"); return;
    case DKIM_SIGERROR_EXPIRED: set("fail", "signature expired (x=)"); return;
    case DKIM_SIGERROR_KEYTOOSMALL:
      set("permerror", fmt::format("RSA key too small (RFC 8301){}",
                                   out.key_bits ? fmt::format(": {} bits", out.key_bits) : ""));
      return;
    case DKIM_SIGERROR_SUBDOMAIN: set("permerror", "i= is a subdomain but the key says t=s"); return;
    case DKIM_SIGERROR_KEYHASHMISMATCH: set("permerror", "hash not allowed by the key's h="); return;
    case DKIM_SIGERROR_OK:
      if (bh == DKIM_SIGBH_MISMATCH) set("fail", "body hash mismatch");
      else set("permerror", "signature not processed");
      return;
    default: {
      const char* why = dkim_sig_geterrorstr(static_cast<DKIM_SIGERROR>(err));
      set("permerror", why ? why : fmt::format("error {}", err));
      return;
    }
  }
}

// Frees a DKIM handle on every exit path.
struct HandleGuard {
  DKIM* h;
  ~HandleGuard() {
    if (h) dkim_free(h);
  }
};

}  // namespace

struct DkimVerifier::Lib {
  DKIM_LIB* lib = nullptr;
  ~Lib() {
    if (lib) dkim_close(lib);
  }
};

DkimVerifier::DkimVerifier(Resolver& resolver, policy::DkimConfig config)
    : resolver_(resolver), config_(config), lib_(std::make_unique<Lib>()) {
  lib_->lib = dkim_init(nullptr, nullptr);
  if (!lib_->lib) throw std::runtime_error("libopendkim: dkim_init failed");
  // DELAYSIGPROC: key lookup and signature checks wait for dkim_eom(), after our fetch.
  // BADSIGHANDLES: a signature with syntax errors is reported (permerror), not dropped.
  unsigned int flags = DKIM_LIBFLAGS_DELAYSIGPROC | DKIM_LIBFLAGS_BADSIGHANDLES;
  unsigned int min_bits = config_.min_rsa_bits;
  if (dkim_options(lib_->lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags) !=
          DKIM_STAT_OK ||
      dkim_options(lib_->lib, DKIM_OP_SETOPT, DKIM_OPTS_MINKEYBITS, &min_bits,
                   sizeof min_bits) != DKIM_STAT_OK ||
      dkim_set_key_lookup(lib_->lib, serve_key) != DKIM_STAT_OK)
    throw std::runtime_error("libopendkim: cannot set options");
}

DkimVerifier::~DkimVerifier() = default;

asio::awaitable<std::vector<DkimSignatureResult>> DkimVerifier::verify(std::string_view message) {
  std::vector<DkimSignatureResult> results;
  policy::HeaderSection header = policy::split_header(message);
  bool signed_message = false;
  for (const auto& f : header.fields)
    signed_message = signed_message || policy::field_name_is(f.name, "DKIM-Signature");
  if (!signed_message) co_return results;

  DKIM_STAT stat = DKIM_STAT_OK;
  static const unsigned char kId[] = "moat";
  HandleGuard guard{dkim_verify(lib_->lib, kId, nullptr, &stat)};
  if (!guard.h) {
    DkimSignatureResult r;
    r.result = "temperror";
    r.reason = "libopendkim: cannot start verification";
    results.push_back(r);
    co_return results;
  }
  KeyTable keys;
  dkim_set_user_context(guard.h, &keys);

  // libopendkim wants each field without its final CRLF, in a writable buffer.
  std::string buf;
  for (const auto& f : header.fields) {
    if (f.name.empty()) continue;  // not a field (no colon): nothing DKIM could have signed
    buf.assign(f.raw);
    dkim_header(guard.h, reinterpret_cast<u_char*>(buf.data()), buf.size());
  }
  stat = dkim_eoh(guard.h);
  DKIM_SIGINFO** sigs = nullptr;
  int nsigs = 0;
  if (stat != DKIM_STAT_OK || dkim_getsiglist(guard.h, &sigs, &nsigs) != DKIM_STAT_OK ||
      nsigs <= 0) {
    // DKIM-Signature fields are present but none could be parsed at all.
    DkimSignatureResult r;
    r.result = "permerror";
    const char* why = dkim_geterror(guard.h);
    r.reason = why && *why ? why : "no usable DKIM-Signature";
    results.push_back(r);
    co_return results;
  }

  // Fetch the keys of the signatures we will check; ignore the rest.
  std::size_t limit = std::min<std::size_t>(static_cast<std::size_t>(nsigs),
                                            config_.max_signatures);
  // A signature whose key could not be fetched is a temperror; libopendkim never sees it
  // (a "try again" from the key callback would end its processing of every signature).
  std::vector<std::string> temp_failed(limit);
  for (int i = 0; i < nsigs; ++i) {
    if (static_cast<std::size_t>(i) >= limit) {
      dkim_sig_ignore(sigs[i]);
      continue;
    }
    DKIM_QUERYINFO** qi = nullptr;
    unsigned int nqi = 0;
    if (dkim_sig_getqueries(guard.h, sigs[i], &qi, &nqi) != DKIM_STAT_OK) continue;
    std::vector<std::string> names;
    for (unsigned int q = 0; q < nqi; ++q) {
      const char* name = dkim_qi_getname(qi[q]);
      if (name && *name) names.push_back(policy::ascii_lower(name));
      std::free(qi[q]);
    }
    std::free(qi);
    for (auto& name : names) {
      if (!keys.answers.count(name)) {
        DnsResult answer = co_await resolver_.lookup(name, RrType::TXT);
        keys.answers[name] = std::move(answer);
      }
      const DnsResult& got = keys.answers[name];
      if (got.status == DnsStatus::TempFail) {
        temp_failed[static_cast<std::size_t>(i)] =
            fmt::format("key lookup failed for {}: {}", name,
                        got.error.empty() ? "temporary DNS failure" : got.error);
        dkim_sig_ignore(sigs[i]);
      }
    }
  }

  std::string body(message.substr(std::min(header.body_offset, message.size())));
  if (!body.empty()) dkim_body(guard.h, reinterpret_cast<u_char*>(body.data()), body.size());
  bool testkey = false;
  dkim_eom(guard.h, &testkey);  // per-signature outcomes are read below

  for (std::size_t i = 0; i < limit; ++i) {
    DKIM_SIGINFO* sig = sigs[i];
    DkimSignatureResult r;
    const char* dom = reinterpret_cast<const char*>(dkim_sig_getdomain(sig));
    const char* sel = reinterpret_cast<const char*>(dkim_sig_getselector(sig));
    r.domain = dom ? policy::ascii_lower(dom) : "";
    r.selector = sel ? sel : "";
    r.algorithm = algorithm_name(sig);
    r.header_b = tag(sig, false, "b").substr(0, 8);
    r.body_length = !tag(sig, false, "l").empty();
    r.testing = (dkim_sig_getflags(sig) & DKIM_SIGFLAG_TESTKEY) != 0 || key_flag(sig, 'y');
    unsigned int bits = 0;
    if (dkim_sig_getkeysize(sig, &bits) == DKIM_STAT_OK) r.key_bits = bits;
    if (!temp_failed[i].empty()) {
      r.result = "temperror";
      r.reason = temp_failed[i];
    } else {
      judge(sig, config_.min_rsa_bits, r);
    }
    results.push_back(std::move(r));
  }
  co_return results;
}

asio::awaitable<policy::Verdict> DkimCheck::run(policy::Stage, policy::MessageContext& ctx) {
  auto results = co_await verifier_.verify(ctx.message);
  ctx.auth.dkim_checked = true;
  ctx.auth.dkim.clear();
  if (results.empty()) ctx.add_finding("dkim.none", 0, "no DKIM signature");
  for (const auto& r : results) {
    std::string detail = fmt::format("d={} s={} a={}", r.domain, r.selector, r.algorithm);
    if (r.testing) detail += " t=y";
    if (!r.reason.empty()) detail += ": " + r.reason;
    double score = 0;
    if (r.result == "fail") score = kFailScore;
    if (r.result == "permerror") score = kPermErrorScore;
    if (r.testing) score = 0;  // RFC 6376 §3.6.1: a testing key's failure counts for nothing
    ctx.add_finding("dkim." + r.result, score, detail);
    if (r.body_length)
      ctx.add_finding("dkim.body_length", kBodyLengthScore,
                      fmt::format("d={} s={}: l= leaves part of the body unsigned", r.domain,
                                  r.selector));
    ctx.auth.dkim.push_back({r.result, r.domain, r.selector, r.header_b, r.reason, r.testing});
  }
  co_return policy::Verdict::next();
}

}  // namespace moat::auth
