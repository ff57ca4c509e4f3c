// Tests for auth/dkim.hpp. Every message is signed at test time with libopendkim's signing API
// and keys generated here with OpenSSL (RSA 2048/1024/512, Ed25519); the key records are served
// by a StaticResolver, so the tests exercise the real fetch-then-verify path without DNS.
#include "auth/dkim.hpp"

#include <doctest/doctest.h>
#include <stdbool.h>
#include <sys/types.h>
#include <opendkim/dkim.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <ctime>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "auth/auth_results.hpp"
#include "auth/dmarc.hpp"
#include "policy/pipeline.hpp"

// Under -DMOAT_SANITIZE=ON: libopendkim 2.11's *signer* (dkim_privkey_load, used only by these
// tests to make Ed25519 signatures) never frees the private key it loads. LeakSanitizer's fast
// unwinder stops inside libcrypto (no frame pointers), so the suppression has to name it too.
// The verifier under test loads no private keys; ASan still checks all its memory accesses.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:dkim_privkey_load\nleak:libcrypto.so\n";
}

namespace moat::auth {
namespace {

template <class T>
T run_sync(asio::awaitable<T> a) {
  asio::io_context io;
  std::optional<T> out;
  std::exception_ptr error;
  asio::co_spawn(io, std::move(a), [&](std::exception_ptr e, T v) {
    error = e;
    if (!e) out = std::move(v);
  });
  io.run();
  if (error) std::rethrow_exception(error);
  return std::move(*out);
}

std::string base64(const unsigned char* data, std::size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  int len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data,
                            static_cast<int>(n));
  out.resize(static_cast<std::size_t>(len));
  return out;
}

struct TestKey {
  std::string private_pem;
  std::string public_b64;  // the p= value
  const char* type;        // k=
};

TestKey make_key(int type, int rsa_bits) {
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(type, nullptr);
  REQUIRE(ctx);
  REQUIRE(EVP_PKEY_keygen_init(ctx) == 1);
  if (type == EVP_PKEY_RSA) REQUIRE(EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, rsa_bits) == 1);
  EVP_PKEY* pkey = nullptr;
  REQUIRE(EVP_PKEY_keygen(ctx, &pkey) == 1);
  EVP_PKEY_CTX_free(ctx);
  TestKey k;
  BIO* bio = BIO_new(BIO_s_mem());
  // libopendkim reads a traditional (PKCS#1) RSA PEM or PKCS#8.
  REQUIRE(PEM_write_bio_PrivateKey(bio, pkey, nullptr, nullptr, 0, nullptr, nullptr) == 1);
  char* mem = nullptr;
  long n = BIO_get_mem_data(bio, &mem);
  k.private_pem.assign(mem, static_cast<std::size_t>(n));
  BIO_free(bio);
  if (type == EVP_PKEY_RSA) {
    unsigned char* der = nullptr;
    int len = i2d_PUBKEY(pkey, &der);
    REQUIRE(len > 0);
    k.public_b64 = base64(der, static_cast<std::size_t>(len));
    OPENSSL_free(der);
    k.type = "rsa";
  } else {
    unsigned char raw[32];
    std::size_t len = sizeof raw;
    REQUIRE(EVP_PKEY_get_raw_public_key(pkey, raw, &len) == 1);
    k.public_b64 = base64(raw, len);  // RFC 8463 §4: the bare 32-octet key
    k.type = "ed25519";
  }
  EVP_PKEY_free(pkey);
  return k;
}

// Keys are made once: RSA generation is the slow part of this file.
const TestKey& rsa2048() { static TestKey k = make_key(EVP_PKEY_RSA, 2048); return k; }
const TestKey& rsa1024() { static TestKey k = make_key(EVP_PKEY_RSA, 1024); return k; }
const TestKey& rsa512() { static TestKey k = make_key(EVP_PKEY_RSA, 512); return k; }
const TestKey& ed25519() { static TestKey k = make_key(EVP_PKEY_ED25519, 0); return k; }

std::string key_record(const TestKey& k, const std::string& extra = "") {
  return std::string("v=DKIM1; k=") + k.type + extra + "; p=" + k.public_b64;
}

struct SignSpec {
  const TestKey* key = nullptr;
  std::string domain = "example.test";
  std::string selector = "sel";
  dkim_canon_t hcanon = DKIM_CANON_RELAXED;
  dkim_canon_t bcanon = DKIM_CANON_RELAXED;
  dkim_alg_t alg = DKIM_SIGN_RSASHA256;
  ssize_t length = -1;      // l=
  time_t fixed_time = 0;    // t= (0: now)
  uint64_t ttl = 0;         // x= = t= + ttl (0: no x=)
  std::string signer;       // i= ("" = none)
};

const std::string kMessage =
    "From: Alice <alice@example.test>\r\n"
    "To: bob@example.net\r\n"
    "Subject: quarterly report\r\n"
    "Date: Sat, 28 Nov 2026 03:00:00 +0000\r\n"
    "Message-ID: <1@example.test>\r\n"
    "\r\n"
    "Hello Bob,  \r\n"
    "\r\n"
    "the numbers are in.\r\n"
    "\r\n\r\n";

// Returns `message` with a DKIM-Signature field prepended, made by libopendkim's signer.
std::string sign(const std::string& message, const SignSpec& spec) {
  DKIM_LIB* lib = dkim_init(nullptr, nullptr);
  REQUIRE(lib);
  unsigned int min_bits = 512;  // let the signer make the weak-key case the verifier must refuse
  REQUIRE(dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_MINKEYBITS, &min_bits, sizeof min_bits) ==
          DKIM_STAT_OK);
  if (spec.fixed_time) {
    uint64_t t = static_cast<uint64_t>(spec.fixed_time);
    REQUIRE(dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FIXEDTIME, &t, sizeof t) == DKIM_STAT_OK);
  }
  if (spec.ttl) {
    uint64_t ttl = spec.ttl;
    REQUIRE(dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNATURETTL, &ttl, sizeof ttl) ==
            DKIM_STAT_OK);
  }
  DKIM_STAT stat;
  DKIM* d = dkim_sign(lib, reinterpret_cast<const unsigned char*>("test"), nullptr,
                      reinterpret_cast<dkim_sigkey_t>(
                          const_cast<char*>(spec.key->private_pem.c_str())),
                      reinterpret_cast<const unsigned char*>(spec.selector.c_str()),
                      reinterpret_cast<const unsigned char*>(spec.domain.c_str()), spec.hcanon,
                      spec.bcanon, spec.alg, spec.length, &stat);
  REQUIRE_MESSAGE(d, "dkim_sign failed: " << stat);
  REQUIRE(dkim_set_margin(d, 0) == DKIM_STAT_OK);  // no folding: one line, nothing to convert
  if (!spec.signer.empty())
    REQUIRE(dkim_set_signer(d, reinterpret_cast<const u_char*>(spec.signer.c_str())) ==
            DKIM_STAT_OK);
  std::size_t pos = 0;
  std::size_t blank = message.find("\r\n\r\n");
  REQUIRE(blank != std::string::npos);
  std::string head = message.substr(0, blank + 2);
  while (pos < head.size()) {
    std::size_t end = pos;
    while (true) {
      end = head.find("\r\n", end);
      if (end + 2 < head.size() && (head[end + 2] == ' ' || head[end + 2] == '\t')) {
        end += 2;
        continue;
      }
      break;
    }
    std::string field = head.substr(pos, end - pos);
    REQUIRE(dkim_header(d, reinterpret_cast<u_char*>(field.data()), field.size()) == DKIM_STAT_OK);
    pos = end + 2;
  }
  REQUIRE(dkim_eoh(d) == DKIM_STAT_OK);
  std::string body = message.substr(blank + 4);
  REQUIRE(dkim_body(d, reinterpret_cast<u_char*>(body.data()), body.size()) == DKIM_STAT_OK);
  stat = dkim_eom(d, nullptr);
  REQUIRE_MESSAGE(stat == DKIM_STAT_OK, "dkim_eom (sign): " << stat << " " << std::string(dkim_geterror(d) ? dkim_geterror(d) : "") << " for " << spec.domain << " alg " << spec.alg << " key " << spec.key->type);
  unsigned char buf[8192];
  const std::string prefix = std::string(DKIM_SIGNHEADER) + ": ";
  REQUIRE(dkim_getsighdr(d, buf, sizeof buf, prefix.size()) == DKIM_STAT_OK);
  std::string value(reinterpret_cast<char*>(buf));
  dkim_free(d);
  dkim_close(lib);
  // The signer folds with bare LF; the message on the wire has CRLF.
  std::string folded;
  for (char c : value) {
    if (c == '\n' && (folded.empty() || folded.back() != '\r')) folded += '\r';
    folded += c;
  }
  return prefix + folded + "\r\n" + message;
}

DnsResult txt(std::string record) {
  DnsResult r;
  r.status = DnsStatus::Ok;
  r.records.push_back(std::move(record));
  return r;
}

std::vector<DkimSignatureResult> verify(StaticResolver& dns, const std::string& message,
                                        policy::DkimConfig config = {}) {
  DkimVerifier v(dns, config);
  return run_sync(v.verify(message));
}

TEST_CASE("dkim: all four canonicalisation pairs verify, with RSA and Ed25519") {
  struct Row {
    dkim_canon_t h, b;
    const TestKey* key;
    dkim_alg_t alg;
    std::string algorithm;
  };
  const Row rows[] = {
      {DKIM_CANON_SIMPLE, DKIM_CANON_SIMPLE, &rsa2048(), DKIM_SIGN_RSASHA256, "rsa-sha256"},
      {DKIM_CANON_SIMPLE, DKIM_CANON_RELAXED, &rsa2048(), DKIM_SIGN_RSASHA256, "rsa-sha256"},
      {DKIM_CANON_RELAXED, DKIM_CANON_SIMPLE, &rsa2048(), DKIM_SIGN_RSASHA256, "rsa-sha256"},
      {DKIM_CANON_RELAXED, DKIM_CANON_RELAXED, &rsa2048(), DKIM_SIGN_RSASHA256, "rsa-sha256"},
      {DKIM_CANON_SIMPLE, DKIM_CANON_SIMPLE, &ed25519(), DKIM_SIGN_ED25519SHA256, "ed25519-sha256"},
      {DKIM_CANON_RELAXED, DKIM_CANON_RELAXED, &ed25519(), DKIM_SIGN_ED25519SHA256,
       "ed25519-sha256"},
      {DKIM_CANON_RELAXED, DKIM_CANON_RELAXED, &rsa1024(), DKIM_SIGN_RSASHA256, "rsa-sha256"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.h);
    CAPTURE(row.b);
    CAPTURE(row.algorithm);
    SignSpec spec;
    spec.key = row.key;
    spec.hcanon = row.h;
    spec.bcanon = row.b;
    spec.alg = row.alg;
    std::string signed_msg = sign(kMessage, spec);
    StaticResolver dns;
    dns.add("sel._domainkey.example.test", RrType::TXT, txt(key_record(*row.key)));
    auto r = verify(dns, signed_msg);
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "pass");
    CHECK(r[0].reason == "");
    CHECK(r[0].domain == "example.test");
    CHECK(r[0].selector == "sel");
    CHECK(r[0].algorithm == row.algorithm);
    CHECK(r[0].header_b.size() == 8);
    CHECK_FALSE(r[0].body_length);
    CHECK_FALSE(r[0].testing);
    // The same signature must not survive a change to the signed Subject.
    std::string tampered = signed_msg;
    auto at = tampered.find("quarterly");
    REQUIRE(at != std::string::npos);
    tampered.replace(at, 9, "QUARTERLY");
    auto t = verify(dns, tampered);
    REQUIRE(t.size() == 1);
    // relaxed header canonicalisation does not fold case in values: still a mismatch
    CHECK(t[0].result == "fail");
  }
}

TEST_CASE("dkim: tampering, expiry, keys missing, revoked, weak, and DNS failure") {
  SignSpec base;
  base.key = &rsa2048();
  const std::string good_record = key_record(rsa2048());
  struct Row {
    std::string name;
    std::string message;                // signed (and possibly altered) message
    std::optional<DnsResult> key;       // nullopt: NXDOMAIN
    std::string result;
    std::string reason_has;
  };
  auto signed_with = [&](SignSpec s) { return sign(kMessage, s); };
  std::string body_tampered = signed_with(base);
  body_tampered.replace(body_tampered.find("numbers"), 7, "NUMBERS");
  std::string header_tampered = signed_with(base);
  header_tampered.replace(header_tampered.find("To: bob@"), 8, "To: eve@");
  SignSpec expired = base;
  expired.fixed_time = std::time(nullptr) - 2 * 86400;
  expired.ttl = 3600;
  SignSpec sha1 = base;
  sha1.alg = DKIM_SIGN_RSASHA1;
  SignSpec weak = base;
  weak.key = &rsa512();
  DnsResult servfail;
  servfail.status = DnsStatus::TempFail;
  servfail.error = "SERVFAIL";
  DnsResult nodata;
  nodata.status = DnsStatus::NoData;

  const Row rows[] = {
      {"untouched", signed_with(base), txt(good_record), "pass", ""},
      {"body tampered", body_tampered, txt(good_record), "fail", "body hash"},
      {"header tampered", header_tampered, txt(good_record), "fail", "signature"},
      {"expired x=", signed_with(expired), txt(good_record), "fail", "expired"},
      {"no key: NXDOMAIN", signed_with(base), std::nullopt, "permerror", "no key"},
      {"no key: no TXT record", signed_with(base), nodata, "permerror", "no key"},
      {"DNS temporary failure", signed_with(base), servfail, "temperror", "key lookup"},
      {"revoked key (empty p=)", signed_with(base), txt("v=DKIM1; k=rsa; p="), "fail", "revoked"},
      {"512-bit RSA key", signed_with(weak), txt(key_record(rsa512())), "permerror", "too small"},
      {"rsa-sha1", signed_with(sha1), txt(good_record), "permerror", "rsa-sha1"},
      {"key h= excludes sha256", signed_with(base), txt(key_record(rsa2048(), "; h=sha1")),
       "permerror", "h="},
      {"key of another type", signed_with(base), txt(key_record(ed25519())), "permerror", ""},
      {"garbage key record", signed_with(base), txt("v=DKIM1; p=!!!notbase64"), "permerror", ""},
  };
  for (const auto& row : rows) {
    CAPTURE(row.name);
    StaticResolver dns;
    if (row.key) dns.add("sel._domainkey.example.test", RrType::TXT, *row.key);
    auto r = verify(dns, row.message);
    REQUIRE(r.size() == 1);
    CAPTURE(r[0].reason);
    CHECK(r[0].result == row.result);
    CHECK(r[0].reason.find(row.reason_has) != std::string::npos);
    CHECK(r[0].domain == "example.test");
  }
}

TEST_CASE("dkim: several signatures are judged one by one, in order") {
  SignSpec a;
  a.key = &rsa2048();
  SignSpec b;
  b.key = &ed25519();
  b.alg = DKIM_SIGN_ED25519SHA256;
  b.domain = "other.test";
  b.selector = "ed";
  SignSpec c;
  c.key = &rsa2048();
  c.domain = "missing.test";
  std::string msg = sign(sign(sign(kMessage, a), b), c);  // c's field ends up on top
  StaticResolver dns;
  dns.add("sel._domainkey.example.test", RrType::TXT, txt(key_record(rsa2048())));
  dns.add("ed._domainkey.other.test", RrType::TXT, txt(key_record(ed25519())));
  auto r = verify(dns, msg);
  REQUIRE(r.size() == 3);
  CHECK(r[0].domain == "missing.test");
  CHECK(r[0].result == "permerror");
  CHECK(r[1].domain == "other.test");
  CHECK(r[1].selector == "ed");
  CHECK(r[1].algorithm == "ed25519-sha256");
  CHECK(r[1].result == "pass");
  CHECK(r[2].domain == "example.test");
  CHECK(r[2].result == "pass");

  // One key's DNS failure leaves the other signatures' verdicts intact.
  StaticResolver flaky;
  DnsResult servfail;
  servfail.status = DnsStatus::TempFail;
  flaky.add("sel._domainkey.example.test", RrType::TXT, servfail);
  flaky.add("ed._domainkey.other.test", RrType::TXT, txt(key_record(ed25519())));
  auto f = verify(flaky, msg);
  REQUIRE(f.size() == 3);
  CHECK(f[0].result == "permerror");
  CHECK(f[1].result == "pass");
  CHECK(f[2].result == "temperror");

  // max_signatures bounds the work: only the first is checked.
  policy::DkimConfig one;
  one.max_signatures = 1;
  auto limited = verify(dns, msg, one);
  REQUIRE(limited.size() == 1);
  CHECK(limited[0].domain == "missing.test");
}

TEST_CASE("dkim: l= is reported, key flags t=y and t=s are honoured") {
  SignSpec l;
  l.key = &rsa2048();
  std::size_t body_len = kMessage.size() - (kMessage.find("\r\n\r\n") + 4);
  l.length = static_cast<ssize_t>(body_len);
  std::string with_l = sign(kMessage, l);
  std::string appended = with_l + "Click here: http://phish.example/\r\n";
  StaticResolver dns;
  dns.add("sel._domainkey.example.test", RrType::TXT, txt(key_record(rsa2048())));
  for (const auto* m : {&with_l, &appended}) {
    auto r = verify(dns, *m);
    REQUIRE(r.size() == 1);
    CHECK(r[0].result == "pass");  // l= covers only the signed part: that is why it is flagged
    CHECK(r[0].body_length);
  }

  StaticResolver testing;
  testing.add("sel._domainkey.example.test", RrType::TXT,
              txt(key_record(rsa2048(), "; t=y")));
  SignSpec plain;
  plain.key = &rsa2048();
  auto t = verify(testing, sign(kMessage, plain));
  REQUIRE(t.size() == 1);
  CHECK(t[0].testing);

  // i= in a subdomain of d=: fine unless the key says t=s.
  SignSpec sub;
  sub.key = &rsa2048();
  sub.signer = "@news.example.test";
  std::string sub_msg = sign(kMessage, sub);
  auto ok = verify(dns, sub_msg);
  REQUIRE(ok.size() == 1);
  CHECK(ok[0].result == "pass");
  StaticResolver strict;
  strict.add("sel._domainkey.example.test", RrType::TXT, txt(key_record(rsa2048(), "; t=s")));
  auto s = verify(strict, sub_msg);
  REQUIRE(s.size() == 1);
  CHECK(s[0].result == "permerror");
  CHECK(s[0].reason.find("t=s") != std::string::npos);
}

TEST_CASE("dkim: unsigned and malformed messages") {
  StaticResolver dns;
  CHECK(verify(dns, kMessage).empty());
  CHECK(verify(dns, "").empty());
  CHECK(verify(dns, "no header at all").empty());
  auto garbage = verify(dns, "DKIM-Signature: this is not a signature\r\n" + kMessage);
  REQUIRE(garbage.size() == 1);
  CHECK(garbage[0].result == "permerror");
  auto no_d = verify(dns, "DKIM-Signature: v=1; a=rsa-sha256; s=x; h=from; bh=AAAA; b=AAAA\r\n" +
                              kMessage);
  REQUIRE(no_d.size() == 1);
  CHECK(no_d[0].result == "permerror");
}

TEST_CASE("DkimCheck: findings name d= and s=, results go to ctx.auth") {
  SignSpec a;
  a.key = &rsa2048();
  SignSpec bad;
  bad.key = &rsa2048();
  bad.domain = "nokey.test";
  bad.selector = "s2";
  StaticResolver dns;
  dns.add("sel._domainkey.example.test", RrType::TXT, txt(key_record(rsa2048())));
  DkimVerifier v(dns, {});
  DkimCheck check(v);
  CHECK(check.runs_at(policy::Stage::EndOfData));
  CHECK_FALSE(check.runs_at(policy::Stage::MailFrom));

  policy::MessageContext ctx;
  ctx.message = sign(sign(kMessage, a), bad);
  auto verdict = run_sync(check.run(policy::Stage::EndOfData, ctx));
  CHECK(verdict.action == policy::Action::Continue);
  REQUIRE(ctx.findings.size() == 2);
  CHECK(ctx.findings[0].name == "dkim.permerror");
  CHECK(ctx.findings[0].score == DkimCheck::kPermErrorScore);
  CHECK(ctx.findings[0].detail.find("d=nokey.test s=s2") != std::string::npos);
  CHECK(ctx.findings[1].name == "dkim.pass");
  CHECK(ctx.findings[1].score == 0);
  CHECK(ctx.findings[1].detail.find("d=example.test s=sel") != std::string::npos);
  CHECK(ctx.auth.dkim_checked);
  REQUIRE(ctx.auth.dkim.size() == 2);
  CHECK(ctx.auth.dkim[1].result == "pass");
  CHECK(ctx.auth.dkim[1].domain == "example.test");

  policy::MessageContext unsigned_ctx;
  unsigned_ctx.message = kMessage;
  run_sync(check.run(policy::Stage::EndOfData, unsigned_ctx));
  REQUIRE(unsigned_ctx.findings.size() == 1);
  CHECK(unsigned_ctx.findings[0].name == "dkim.none");
  CHECK(unsigned_ctx.auth.dkim_checked);
  CHECK(unsigned_ctx.auth.dkim.empty());
}

// DKIM, DMARC and Authentication-Results composed as main.cpp composes them, on one Pipeline.
TEST_CASE("sender authentication pipeline: a spoof of a p=reject domain is refused, a signed "
          "message gets Authentication-Results") {
  StaticResolver dns;
  dns.add("sel._domainkey.bank.example", RrType::TXT, txt(key_record(rsa2048())));
  dns.add("_dmarc.bank.example", RrType::TXT, txt("v=DMARC1; p=reject"));
  DkimVerifier verifier(dns, {});
  PublicSuffixList psl;
  DmarcEvaluator evaluator(dns, psl);
  std::vector<std::unique_ptr<policy::Check>> checks;
  checks.push_back(std::make_unique<DkimCheck>(verifier));
  checks.push_back(std::make_unique<DmarcCheck>(evaluator, policy::DmarcConfig{}));
  checks.push_back(std::make_unique<AuthResultsCheck>("mx.moat.test"));
  policy::Pipeline pipeline(policy::RelayCheck(policy::RelayConfig{}), std::move(checks),
                            policy::Decider(policy::DeciderConfig{}));

  const std::string message =
      "Authentication-Results: mx.moat.test; dmarc=pass header.from=bank.example\r\n"
      "From: Bank <alerts@bank.example>\r\nTo: you@example.test\r\nSubject: statement\r\n"
      "\r\nYour statement is ready.\r\n";
  SignSpec spec;
  spec.key = &rsa2048();
  spec.domain = "bank.example";

  policy::MessageContext legit;
  legit.message = sign(message, spec);
  auto v = run_sync(pipeline.run(policy::Stage::EndOfData, legit));
  CHECK_FALSE(v.final());
  REQUIRE(legit.add_headers.size() == 1);
  const std::string& ar = legit.add_headers[0].second;
  CAPTURE(ar);
  CHECK(ar.rfind("mx.moat.test;\r\n\tdkim=pass header.d=bank.example header.s=sel", 0) == 0);
  CHECK(ar.find("\r\n\tdmarc=pass header.from=bank.example") != std::string::npos);
  REQUIRE(legit.remove_headers.size() == 1);  // the forged one the sender put in
  CHECK(legit.remove_headers[0] == policy::HeaderRemoval{"Authentication-Results", 0});

  policy::MessageContext spoof;
  spoof.message = message;  // unsigned, and no SPF pass
  auto r = run_sync(pipeline.run(policy::Stage::EndOfData, spoof));
  CHECK(r.action == policy::Action::Reject);
  CHECK(r.reply.code == 550);
  CHECK(r.reply.enhanced == "5.7.1");
  CHECK(r.reply.text.find("DMARC") != std::string::npos);
  CHECK(r.check == "dmarc");

  policy::MessageContext tampered;
  tampered.message = sign(message, spec);
  tampered.message.replace(tampered.message.find("ready"), 5, "READY");
  auto t = run_sync(pipeline.run(policy::Stage::EndOfData, tampered));
  CHECK(t.action == policy::Action::Reject);
}

}  // namespace
}  // namespace moat::auth
