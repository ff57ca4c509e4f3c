#include "gateway/tls/tls_context.hpp"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace moat::gateway {
namespace {

std::string ssl_error() {
  char buf[256] = {};
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  return buf;
}

// Makes a P-256 key and a self-signed certificate valid for a year.
bool use_self_signed(SSL_CTX* ctx, const std::string& hostname) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), X509_free);
  if (!key || !cert) return false;
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), static_cast<long>(time(nullptr)));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 365L * 86400);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(hostname.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), key.get());
  std::string san = "DNS:" + hostname;
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, cert.get(), cert.get(), nullptr, nullptr, 0);
  if (X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, san.c_str())) {
    X509_add_ext(cert.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) return false;
  return SSL_CTX_use_certificate(ctx, cert.get()) == 1 &&
         SSL_CTX_use_PrivateKey(ctx, key.get()) == 1;
}

}  // namespace

Result<std::shared_ptr<asio::ssl::context>> make_tls_context(const policy::TlsConfig& config,
                                                             const std::string& hostname) {
  using R = Result<std::shared_ptr<asio::ssl::context>>;
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX* native = ctx->native_handle();
  SSL_CTX_set_min_proto_version(native,
                                config.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_options(native, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                  SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
  if (config.cert.empty()) {
    if (!use_self_signed(native, hostname))
      return R::fail("cannot generate a self-signed certificate: " + ssl_error());
  } else {
    if (SSL_CTX_use_certificate_chain_file(native, config.cert.c_str()) != 1)
      return R::fail(fmt::format("{}: {}", config.cert, ssl_error()));
    if (SSL_CTX_use_PrivateKey_file(native, config.key.c_str(), SSL_FILETYPE_PEM) != 1)
      return R::fail(fmt::format("{}: {}", config.key, ssl_error()));
    if (SSL_CTX_check_private_key(native) != 1)
      return R::fail(fmt::format("{}: key does not match certificate", config.key));
  }
  return ctx;
}

}  // namespace moat::gateway
