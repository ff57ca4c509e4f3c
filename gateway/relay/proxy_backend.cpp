#include "gateway/relay/proxy_backend.hpp"

#include <spdlog/spdlog.h>

#include "gateway/log.hpp"

namespace moat::gateway {

ProxyBackend::ProxyBackend(asio::any_io_executor ex, const policy::Config& config,
                           const policy::Listener& listener, asio::ssl::context& tls)
    : ex_(std::move(ex)), route_(config.proxy_route()) {
  timing_.connect_timeout = timing_.command_timeout = timing_.data_timeout =
      listener.proxy_timeout;
  options_.helo = config.server.hostname;
  options_.tls = route_->tls;
  options_.server_name = route_->tls_server_name;
  options_.tls_context = &tls;
  options_.timing = &timing_;
}

policy::Reply ProxyBackend::for_client(const ClientReply& r, std::string_view step,
                                       std::string_view log_prefix) {
  int cls = r.code / 100;
  if (!r.local && (cls == 2 || cls == 4 || cls == 5)) return r.parsed();
  spdlog::warn("{} event=proxy_error step={} error={}", log_prefix, step, kv(r.text));
  if (r.local && cls == 5) {
    // The backend lacks something this message needs (SMTPUTF8, 8BITMIME, size): permanent,
    // but the backend's address stays in the log.
    auto p = r.parsed();
    return {p.code, p.enhanced, "The internal mail server cannot accept this message"};
  }
  // No answer we can pass on: the client keeps the message and retries.
  client_.reset();
  in_transaction_ = false;
  return {451, "4.4.1", "Internal mail server not available, try again later"};
}

asio::awaitable<policy::Reply> ProxyBackend::mail(const SpoolEnvelope& env, std::uint64_t size,
                                                  std::string_view log_prefix) {
  co_await abandon();
  if (client_ && !client_->usable()) client_.reset();
  if (!client_) {
    ClientReply error =
        ClientReply::local_failure(451, "451 4.4.1 the proxy route has no hosts");
    for (const auto& host : route_->hosts) {
      client_ = co_await SmtpClient::connect(ex_, host, options_, error);
      if (client_) break;
      spdlog::info("{} event=connect_failed relay={} error={}", log_prefix, host.to_string(),
                   kv(error.text));
    }
    if (!client_) {
      policy::Reply r = for_client(error, "connect", log_prefix);
      co_return r;
    }
  }
  ClientReply reply = co_await client_->mail(env, size);
  in_transaction_ = reply.positive();
  policy::Reply r = for_client(reply, "mail", log_prefix);
  co_return r;
}

asio::awaitable<policy::Reply> ProxyBackend::rcpt(const SpoolRecipient& rcpt,
                                                  std::string_view log_prefix) {
  if (!client_ || !in_transaction_) {
    // The backend connection was lost earlier in this transaction.
    co_return policy::Reply{451, "4.4.1", "Internal mail server not available, try again later"};
  }
  ClientReply reply = co_await client_->rcpt(rcpt);
  policy::Reply r = for_client(reply, "rcpt", log_prefix);
  co_return r;
}

asio::awaitable<policy::Reply> ProxyBackend::data(std::string_view head, std::string_view message,
                                                  std::string_view log_prefix) {
  if (!client_ || !in_transaction_)
    co_return policy::Reply{451, "4.4.1", "Internal mail server not available, try again later"};
  in_transaction_ = false;
  ClientReply reply = co_await client_->data(head, message);
  policy::Reply r = for_client(reply, "data", log_prefix);
  co_return r;
}

asio::awaitable<void> ProxyBackend::abandon() {
  if (client_ && in_transaction_) co_await client_->rset();
  in_transaction_ = false;
}

asio::awaitable<void> ProxyBackend::quit() {
  in_transaction_ = false;
  if (client_) co_await client_->quit();
  client_.reset();
}

}  // namespace moat::gateway
