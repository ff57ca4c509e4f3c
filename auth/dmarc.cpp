#include "auth/dmarc.hpp"

#include <fmt/format.h>
#include <libpsl.h>

#include <algorithm>
#include <charconv>
#include <random>
#include <stdexcept>

#include "policy/address.hpp"
#include "policy/header_fields.hpp"

namespace moat::auth {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' ||
                        s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' ||
                        s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

bool valid_policy(std::string_view p) { return p == "none" || p == "quarantine" || p == "reject"; }

int severity(std::string_view result) {
  if (result == "fail") return 4;
  if (result == "temperror") return 3;
  if (result == "permerror") return 2;
  if (result == "none") return 1;
  return 0;  // pass
}
int strictness(std::string_view policy) {
  return policy == "reject" ? 2 : policy == "quarantine" ? 1 : 0;
}

// The domain of one mailbox ("Name <a@b>", "a@b", "Group: a@b", with comments already gone);
// "" when there is no mailbox in it (an empty group), "!" when it has no usable domain.
std::string mailbox_domain(std::string_view m) {
  m = trim(m);
  // Angle-addr: what is between the brackets (outside quotes).
  bool q = false;
  std::size_t lt = std::string_view::npos, gt = std::string_view::npos;
  for (std::size_t i = 0; i < m.size(); ++i) {
    if (m[i] == '\\' && q) {
      ++i;
      continue;
    }
    if (m[i] == '"') q = !q;
    else if (!q && m[i] == '<' && lt == std::string_view::npos) lt = i;
    else if (!q && m[i] == '>' && lt != std::string_view::npos) {
      gt = i;
      break;
    }
  }
  if (lt != std::string_view::npos) {
    if (gt == std::string_view::npos) return "!";
    m = m.substr(lt + 1, gt - lt - 1);
  }
  // Group display name or obsolete route ("@a,@b:"): keep what follows the last ':' outside
  // quotes; a group's closing ';' ends it.
  q = false;
  std::size_t colon = std::string_view::npos;
  for (std::size_t i = 0; i < m.size(); ++i) {
    if (m[i] == '\\' && q) {
      ++i;
      continue;
    }
    if (m[i] == '"') q = !q;
    else if (!q && m[i] == ':') colon = i;
  }
  if (colon != std::string_view::npos) m = m.substr(colon + 1);
  while (!m.empty() && (m.back() == ';' || m.back() == ' ' || m.back() == '\t')) m.remove_suffix(1);
  m = trim(m);
  if (m.empty()) return "";
  auto at = m.rfind('@');
  if (at == std::string_view::npos) return "!";
  std::string d = policy::ascii_lower(trim(m.substr(at + 1)));
  if (!d.empty() && d.back() == '.') d.pop_back();
  if (d.empty() || d.front() == '[' || !policy::valid_domain(d, true)) return "!";
  return d;
}

}  // namespace

Result<DmarcRecord> parse_dmarc_record(std::string_view txt) {
  using R = Result<DmarcRecord>;
  DmarcRecord rec;
  std::vector<std::pair<std::string, std::string>> tags;
  std::size_t start = 0;
  while (start <= txt.size()) {
    std::size_t end = txt.find(';', start);
    if (end == std::string_view::npos) end = txt.size();
    std::string_view part = trim(txt.substr(start, end - start));
    start = end + 1;
    if (part.empty()) continue;
    auto eq = part.find('=');
    if (eq == std::string_view::npos) {
      if (tags.empty()) return R::fail("not DMARC");
      return R::fail(fmt::format("'{}' is not tag=value", part));
    }
    tags.emplace_back(std::string(trim(part.substr(0, eq))), std::string(trim(part.substr(eq + 1))));
  }
  // §6.4: v=DMARC1 must come first, exactly.
  if (tags.empty() || tags[0].first != "v" || tags[0].second != "DMARC1") return R::fail("not DMARC");
  bool has_rua = false, p_ok = false, sp_bad = false;
  for (std::size_t i = 1; i < tags.size(); ++i) {
    const auto& [k, v] = tags[i];
    std::string lv = policy::ascii_lower(v);
    if (k == "p") {
      p_ok = valid_policy(lv);
      if (p_ok) rec.p = lv;
    } else if (k == "sp") {
      if (valid_policy(lv)) rec.sp = lv;
      else sp_bad = true;
    } else if (k == "pct") {
      int n = -1;
      auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec != std::errc() || ptr != v.data() + v.size() || n < 0 || n > 100)
        return R::fail(fmt::format("pct={} is not 0 to 100", v));
      rec.pct = n;
    } else if (k == "adkim" || k == "aspf") {
      if (lv != "r" && lv != "s") return R::fail(fmt::format("{}={} is not r or s", k, v));
      (k == "adkim" ? rec.adkim_strict : rec.aspf_strict) = lv == "s";
    } else if (k == "rua") {
      has_rua = v.find(':') != std::string::npos;  // at least a URI scheme
    }
  }
  // §6.6.3 step 6: a bad p= or sp= with a usable rua= reads as p=none, otherwise invalid.
  if (!p_ok || sp_bad) {
    if (!has_rua) return R::fail(p_ok ? "sp= is invalid" : "p= is missing or invalid");
    rec.p = "none";
    rec.sp.clear();
  }
  return rec;
}

struct PublicSuffixList::Ctx {
  psl_ctx_t* psl = nullptr;
  ~Ctx() {
    if (psl) psl_free(psl);
  }
};

PublicSuffixList::PublicSuffixList() : ctx_(std::make_unique<Ctx>()) {
  // psl_latest(NULL) takes the newer of Debian's file (psl_dist_filename()) and the built-in
  // list; psl_builtin() is the fallback when the file is missing.
  // psl_latest() returns a context we own (psl_free); psl_builtin() a static one we must not
  // free, used by organizational_domain() when ctx_->psl is null.
  ctx_->psl = psl_latest(nullptr);
  if (!ctx_->psl && !psl_builtin())
    throw std::runtime_error("libpsl: no public suffix list available");
}

PublicSuffixList::~PublicSuffixList() = default;

std::string PublicSuffixList::organizational_domain(std::string_view domain) const {
  std::string d(domain);
  const char* reg = ctx_->psl ? psl_registrable_domain(ctx_->psl, d.c_str())
                              : psl_registrable_domain(psl_builtin(), d.c_str());
  return reg ? std::string(reg) : d;
}

bool dmarc_aligned(std::string_view a, std::string_view b, bool strict,
                   const PublicSuffixList& psl) {
  if (a.empty() || b.empty()) return false;
  std::string la = policy::ascii_lower(a), lb = policy::ascii_lower(b);
  if (la == lb) return true;
  return !strict && psl.organizational_domain(la) == psl.organizational_domain(lb);
}

DmarcOutcome evaluate_dmarc(const DmarcInput& in, const DmarcRecord& rec,
                            const std::string& record_domain, unsigned roll,
                            const PublicSuffixList& psl) {
  DmarcOutcome out;
  out.domain = in.from_domain;
  out.record_domain = record_domain;
  for (const auto& d : in.dkim)
    out.dkim_aligned = out.dkim_aligned ||
                       (d.result == "pass" && !d.testing &&
                        dmarc_aligned(d.domain, in.from_domain, rec.adkim_strict, psl));
  out.spf_aligned = in.spf_result == "pass" &&
                    dmarc_aligned(in.spf_domain, in.from_domain, rec.aspf_strict, psl);
  if (out.spf_aligned || out.dkim_aligned) {
    out.result = "pass";
    out.policy = "none";
    out.reason = out.dkim_aligned ? "aligned DKIM pass" : "aligned SPF pass";
    return out;
  }
  out.result = "fail";
  // sp= applies when the record is the organisational domain's and From is below it.
  bool subdomain = record_domain != in.from_domain;
  out.policy = subdomain && !rec.sp.empty() ? rec.sp : rec.p;
  out.reason = "neither SPF nor DKIM aligned with header.from";
  if (roll >= static_cast<unsigned>(rec.pct) && out.policy != "none") {
    out.policy = out.policy == "reject" ? "quarantine" : "none";  // §6.6.4
    out.reason += fmt::format(" (not sampled by pct={})", rec.pct);
  }
  return out;
}

namespace {
enum class Found { TempFail, None, One, Several, Invalid };
struct Discovery {
  Found found = Found::None;
  DmarcRecord record;
  std::string why;
};
}  // namespace

static asio::awaitable<Discovery> discover(Resolver& resolver, std::string domain) {
  Discovery d;
  DnsResult r = co_await resolver.lookup("_dmarc." + domain, RrType::TXT);
  if (r.status == DnsStatus::TempFail) {
    d.found = Found::TempFail;
    d.why = r.error.empty() ? "temporary DNS failure" : r.error;
    co_return d;
  }
  int n = 0;
  for (const auto& txt : r.records) {
    auto rec = parse_dmarc_record(txt);
    if (!rec && rec.error().message == "not DMARC") continue;  // §6.6.3 step 3: discard
    ++n;
    if (rec) d.record = *rec;
    else d.why = rec.error().message;
  }
  if (n == 0) d.found = Found::None;
  else if (n > 1) d.found = Found::Several;
  else d.found = d.why.empty() ? Found::One : Found::Invalid;
  co_return d;
}

asio::awaitable<DmarcOutcome> DmarcEvaluator::evaluate(DmarcInput input, unsigned roll) {
  std::string where = input.from_domain;
  Discovery d = co_await discover(resolver_, where);
  if (d.found == Found::None) {
    std::string org = psl_.organizational_domain(input.from_domain);
    if (org != input.from_domain) {
      where = org;
      d = co_await discover(resolver_, where);
    }
  }
  DmarcOutcome out;
  out.domain = input.from_domain;
  out.policy = "none";
  switch (d.found) {
    case Found::TempFail:
      out.result = "temperror";
      out.reason = fmt::format("_dmarc.{}: {}", where, d.why);
      break;
    case Found::None:
      out.result = "none";
      out.reason = "no DMARC record";
      break;
    case Found::Several:
      out.result = "permerror";
      out.record_domain = where;
      out.reason = fmt::format("several DMARC records at _dmarc.{}", where);
      break;
    case Found::Invalid:
      out.result = "permerror";
      out.record_domain = where;
      out.reason = fmt::format("invalid DMARC record at _dmarc.{}: {}", where, d.why);
      break;
    case Found::One:
      out = evaluate_dmarc(input, d.record, where, roll, psl_);
      break;
  }
  co_return out;
}

FromDomains from_domains(std::string_view message) {
  FromDomains out;
  policy::HeaderSection h = policy::split_header(message);
  bool any_mailbox = false;
  for (const auto& f : h.fields) {
    if (!policy::field_name_is(f.name, "From")) continue;
    ++out.fields;
    // Unfold and drop comments (nested, quoted-pair aware), outside quoted strings.
    std::string v;
    bool q = false;
    int depth = 0;
    for (std::size_t i = 0; i < f.value.size(); ++i) {
      char c = f.value[i];
      if (c == '\r' || c == '\n') continue;
      if (c == '\\' && (q || depth) && i + 1 < f.value.size()) {
        if (!depth) v += c, v += f.value[i + 1];
        ++i;
        continue;
      }
      if (depth) {
        depth += c == '(' ? 1 : c == ')' ? -1 : 0;
        if (!depth) v += ' ';
        continue;
      }
      if (c == '"') q = !q;
      if (!q && c == '(') {
        depth = 1;
        continue;
      }
      v += c;
    }
    // Split the mailbox list on commas outside quotes and angle brackets.
    q = false;
    bool angle = false;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= v.size(); ++i) {
      if (i < v.size()) {
        char c = v[i];
        if (c == '\\' && q) {
          ++i;
          continue;
        }
        if (c == '"') q = !q;
        if (!q && c == '<') angle = true;
        if (!q && c == '>') angle = false;
        if (q || angle || c != ',') continue;
      }
      std::string d = mailbox_domain(std::string_view(v).substr(start, i - start));
      start = i + 1;
      if (d.empty()) continue;
      any_mailbox = true;
      if (d == "!") {
        out.problem = "a From: mailbox has no valid domain";
        return out;
      }
      if (std::find(out.domains.begin(), out.domains.end(), d) == out.domains.end())
        out.domains.push_back(d);
    }
  }
  if (out.fields == 0) out.problem = "no From: field";
  else if (!any_mailbox) out.problem = "From: holds no mailbox";
  out.ok = out.problem.empty();
  return out;
}

DmarcCheck::DmarcCheck(DmarcEvaluator& evaluator, policy::DmarcConfig config,
                       std::function<unsigned()> roll)
    : evaluator_(evaluator), config_(config), roll_(std::move(roll)) {
  if (!roll_) {
    auto gen = std::make_shared<std::mt19937>(std::random_device{}());
    roll_ = [gen] { return static_cast<unsigned>((*gen)() % 100); };
  }
}

asio::awaitable<policy::Verdict> DmarcCheck::run(policy::Stage, policy::MessageContext& ctx) {
  FromDomains from = from_domains(ctx.message);
  if (!from.ok) {
    // Fail safe: a message that names no usable author domain cannot pass DMARC.
    ctx.auth.dmarc_result = "permerror";
    ctx.auth.dmarc_policy = "none";
    ctx.add_finding("dmarc.permerror", kBadFromScore, from.problem);
    co_return policy::Verdict::next();
  }
  DmarcOutcome worst;
  bool first = true;
  for (const auto& domain : from.domains) {
    DmarcInput in;
    in.from_domain = domain;
    in.spf_result = ctx.auth.spf_result;
    in.spf_domain = ctx.auth.spf_domain;
    in.dkim = ctx.auth.dkim;
    unsigned roll = roll_();
    DmarcOutcome o = co_await evaluator_.evaluate(std::move(in), roll);
    bool worse = severity(o.result) > severity(worst.result) ||
                 (severity(o.result) == severity(worst.result) &&
                  strictness(o.policy) > strictness(worst.policy));
    if (first || worse) worst = o;
    first = false;
  }
  ctx.auth.dmarc_result = worst.result;
  ctx.auth.dmarc_domain = worst.domain;
  ctx.auth.dmarc_policy = worst.policy;
  std::string detail = fmt::format("header.from={} policy={}", worst.domain, worst.policy);
  if (from.domains.size() > 1) detail += fmt::format(" (worst of {} From domains)", from.domains.size());
  if (!worst.reason.empty()) detail += ": " + worst.reason;
  double score = 0;
  if (worst.result == "fail") score = worst.policy == "none" ? 1 : kFailScore;
  ctx.add_finding("dmarc." + worst.result, score, detail);
  if (worst.result != "fail") co_return policy::Verdict::next();
  policy::DmarcAction action = worst.policy == "reject"       ? config_.on_reject
                               : worst.policy == "quarantine" ? config_.on_quarantine
                                                              : policy::DmarcAction::None;
  switch (action) {
    case policy::DmarcAction::Reject:
      co_return policy::Verdict::reject(
          550, "5.7.1",
          fmt::format("Message rejected: DMARC policy of {} (p={}) and the message is not "
                      "authenticated",
                      worst.domain, worst.policy));
    case policy::DmarcAction::Quarantine: {
      policy::Verdict v;
      v.action = policy::Action::Quarantine;
      co_return v;
    }
    case policy::DmarcAction::None: break;
  }
  co_return policy::Verdict::next();
}

}  // namespace moat::auth
