// SmtpClient: Moat's side of a connection to the internal MTA (RFC 5321 client, with
// PIPELINING, SIZE, 8BITMIME, SMTPUTF8, CHUNKING/BDAT, DSN and STARTTLS per route).
// One object is one connection; it can carry several transactions (connection reuse).
// Every wait has a timeout; a failure is a reply-shaped value (4xx for anything local or
// network-related), never an exception, so the queue manager decides per recipient.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ssl/context.hpp>
#include <asio/ssl/stream.hpp>
#include <asio/steady_timer.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/spool/envelope.hpp"
#include "policy/config.hpp"
#include "policy/verdict.hpp"

namespace moat::gateway {

// A reply as the server gave it, or as Moat made one up for a local or network failure.
struct ClientReply {
  int code = 0;
  std::string text;    // the whole first line without CRLF, e.g. "550 5.1.1 <x>: unknown"
  bool local = false;  // made up by Moat (network failure, timeout, missing extension)
  bool positive() const { return code >= 200 && code < 300; }
  bool permanent() const { return code >= 500; }
  // "250 2.1.5 Ok" → {250, "2.1.5", "Ok"}; a reply without an enhanced code gets its class's
  // generic one (RFC 3463 X.0.0).
  policy::Reply parsed() const;
  static ClientReply local_failure(int code, std::string text) {
    return {code, std::move(text), true};
  }
};

class SmtpClient : public std::enable_shared_from_this<SmtpClient> {
 public:
  struct Options {
    std::string helo;                     // our host name for EHLO
    policy::RouteTls tls = policy::RouteTls::Opportunistic;
    std::string server_name;              // SNI and, when verifying, the name to check
    asio::ssl::context* tls_context = nullptr;
    const policy::DeliveryConfig* timing = nullptr;
  };

  SmtpClient(asio::any_io_executor ex, policy::Endpoint peer, Options options);

  // The client TLS context for a route: TLS 1.2 or later, certificate verification as the
  // route says.
  static std::unique_ptr<asio::ssl::context> make_tls_context(const policy::Route& route);

  // A new connection to `host`, opened (see open()). An opportunistic-TLS route whose handshake
  // fails is retried in plaintext. nullptr and `error` set when it could not be opened.
  static asio::awaitable<std::shared_ptr<SmtpClient>> connect(asio::any_io_executor ex,
                                                              policy::Endpoint host,
                                                              Options options,
                                                              ClientReply& error);

  // Connects and gets ready for MAIL: greeting, EHLO (HELO if refused), STARTTLS as the route
  // asks, EHLO again. nullopt on success, else why it failed.
  asio::awaitable<std::optional<ClientReply>> open();

  // One transaction for the recipients at `rcpts` (indices into env.recipients). Returns one
  // reply per entry of `rcpts`, in order: the RCPT refusal, or the final reply to the data.
  asio::awaitable<std::vector<ClientReply>> send(const SpoolEnvelope& env,
                                                 std::string_view message,
                                                 const std::vector<std::size_t>& rcpts);

  // The same transaction one step at a time, for the before-queue proxy and recipient
  // callouts. mail(): what this server cannot take (SMTPUTF8, 8BITMIME, SIZE) is refused
  // locally with a 5xx; `size` is the declared or known message size, 0 if unknown.
  asio::awaitable<ClientReply> mail(const SpoolEnvelope& env, std::uint64_t size);
  asio::awaitable<ClientReply> rcpt(const SpoolRecipient& r);
  // Sends `head` (header fields Moat adds) and `message` with BDAT when offered, else DATA,
  // and returns the final reply.
  asio::awaitable<ClientReply> data(std::string_view head, std::string_view message);
  // Ends the transaction so that the connection can carry another.
  asio::awaitable<void> rset();

  // Whether the connection can carry another transaction.
  bool usable() const { return usable_; }
  asio::awaitable<void> quit();
  std::string peer() const { return peer_.to_string(); }
  bool tls_active() const { return tls_ != nullptr; }
  bool chunking() const { return chunking_; }
  // The last send() found the connection dead before the server took MAIL: nothing was
  // delivered, so the transaction can be retried at once on a fresh connection.
  bool lost_before_mail() const { return lost_before_mail_; }

  // Dot-stuffs `data` for DATA (RFC 5321 §4.5.2) and ends it with CRLF "." CRLF; a message not
  // ending in CRLF gets one.
  static std::string dot_stuff(std::string_view data);

 private:
  void arm(std::chrono::seconds timeout);
  void disarm();
  asio::awaitable<bool> write(std::string_view data, std::chrono::seconds timeout);
  asio::awaitable<ClientReply> read_reply(std::chrono::seconds timeout,
                                          std::vector<std::string>* lines = nullptr);
  asio::awaitable<ClientReply> command(std::string_view line);
  asio::awaitable<std::optional<ClientReply>> ehlo();
  ClientReply lost(std::string_view what) const;
  std::optional<ClientReply> cannot_take(const SpoolEnvelope& env, std::uint64_t size) const;
  std::string mail_command(const SpoolEnvelope& env, std::uint64_t size) const;
  std::string rcpt_command(const SpoolRecipient& r) const;

  asio::ip::tcp::socket sock_;
  std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket&>> tls_;
  asio::steady_timer timer_;
  policy::Endpoint peer_;
  Options opt_;
  std::string in_;
  bool timed_out_ = false;
  bool usable_ = false;
  bool lost_before_mail_ = false;
  // What the server offers (EHLO keywords).
  bool esmtp_ = false, pipelining_ = false, eightbit_ = false, smtputf8_ = false,
       chunking_ = false, dsn_ = false, starttls_ = false;
  std::uint64_t size_limit_ = 0;  // 0: none announced
};

}  // namespace moat::gateway
