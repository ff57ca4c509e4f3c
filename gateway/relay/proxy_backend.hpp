// ProxyBackend: the backend side of one client session on a before-queue proxy listener
// (listen entry with mode = "proxy"). The client's transaction is relayed live: MAIL opens the
// connection (or reuses the session's), each RCPT is answered by the backend's own recipient
// validation, and after the end-of-data checks the message goes to the backend, whose final
// reply is the client's. Moat never says 250 for the backend.
//
// Every reply comes back rendered for the client: the backend's own code, enhanced code and
// text; or, when Moat could not get an answer (connection refused, timeout, lost connection),
// 451 4.4.1 without internal details, which go to the log instead.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/ssl/context.hpp>
#include <memory>
#include <string>
#include <string_view>

#include "gateway/relay/smtp_client.hpp"
#include "gateway/spool/envelope.hpp"
#include "policy/config.hpp"
#include "policy/verdict.hpp"

namespace moat::gateway {

class ProxyBackend {
 public:
  // `tls` is the client TLS context for config.proxy_route(). `log_prefix` (sid=… qid=…)
  // starts the log lines about this backend.
  ProxyBackend(asio::any_io_executor ex, const policy::Config& config,
               const policy::Listener& listener, asio::ssl::context& tls);

  // Abandons any open backend transaction (RSET), connects if needed (the route's hosts in
  // order), sends MAIL. `size`: the client's SIZE= or 0.
  asio::awaitable<policy::Reply> mail(const SpoolEnvelope& env, std::uint64_t size,
                                      std::string_view log_prefix);
  asio::awaitable<policy::Reply> rcpt(const SpoolRecipient& r, std::string_view log_prefix);
  // Sends the message (header fields `head` first); the transaction is over afterwards.
  asio::awaitable<policy::Reply> data(std::string_view head, std::string_view message,
                                      std::string_view log_prefix);
  // Ends the backend transaction without sending anything (the message was refused locally).
  asio::awaitable<void> abandon();
  asio::awaitable<void> quit();

 private:
  policy::Reply for_client(const ClientReply& r, std::string_view step,
                           std::string_view log_prefix);

  asio::any_io_executor ex_;
  const policy::Route* route_;
  policy::DeliveryConfig timing_;  // every wait bounded by the listener's proxy_timeout
  SmtpClient::Options options_;
  std::shared_ptr<SmtpClient> client_;
  bool in_transaction_ = false;  // MAIL accepted, data not yet sent
};

}  // namespace moat::gateway
