// The server-side TLS context for STARTTLS (RFC 3207): TLS 1.2 or newer only, no
// renegotiation, no compression. Without a configured certificate, an ephemeral self-signed one
// is generated for server.hostname so that opportunistic TLS works out of the box (MX-to-MX TLS
// is normally unauthenticated; configure a real certificate for anything else).
#pragma once

#include <asio/ssl/context.hpp>
#include <memory>

#include "policy/config.hpp"
#include "policy/result.hpp"

namespace moat::gateway {

Result<std::shared_ptr<asio::ssl::context>> make_tls_context(const policy::TlsConfig& config,
                                                             const std::string& hostname);

}  // namespace moat::gateway
