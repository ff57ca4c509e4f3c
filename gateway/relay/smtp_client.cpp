#include "gateway/relay/smtp_client.hpp"

#include "gateway/log.hpp"
#include "policy/address.hpp"
#include "policy/header_fields.hpp"

#include <fmt/format.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <asio/connect.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ip/address.hpp>
#include <asio/ssl/host_name_verification.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <charconv>

namespace moat::gateway {
namespace {

constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);
constexpr std::size_t kMaxReplyLine = 4096;
constexpr std::size_t kMaxReplyLines = 100;

}  // namespace

SmtpClient::SmtpClient(asio::any_io_executor ex, policy::Endpoint peer, Options options)
    : sock_(ex), timer_(ex), peer_(std::move(peer)), opt_(std::move(options)) {}

policy::Reply ClientReply::parsed() const {
  policy::Reply out{code, "", text.size() > 4 ? text.substr(4) : ""};
  // An enhanced code: class.subject.detail, its class the same as the reply's (RFC 2034 §4).
  std::string_view t = out.text;
  auto sp = t.find(' ');
  std::string_view token = t.substr(0, sp);
  int dots = 0;
  bool digits = !token.empty();
  for (char c : token) {
    if (c == '.') ++dots;
    else if (c < '0' || c > '9') digits = false;
  }
  if (digits && dots == 2 && token.size() <= 11 && token[0] == '0' + code / 100 &&
      token[1] == '.' && token.back() != '.' && token.find("..") == std::string_view::npos) {
    out.enhanced = std::string(token);
    out.text = sp == std::string_view::npos ? "" : std::string(t.substr(sp + 1));
  } else {
    out.enhanced = fmt::format("{}.0.0", code / 100);
  }
  return out;
}

std::unique_ptr<asio::ssl::context> SmtpClient::make_tls_context(const policy::Route& route) {
  auto ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  if (route.tls_verify) {
    ctx->set_verify_mode(asio::ssl::verify_peer);
    std::error_code ec;
    if (route.tls_ca.empty()) ctx->set_default_verify_paths(ec);
    else ctx->load_verify_file(route.tls_ca, ec);
    if (ec)
      spdlog::warn("event=tls_ca_error route={} error={}", route.hosts[0].to_string(),
                   kv(ec.message()));
  } else {
    // Opportunistic TLS between our own hosts: encryption without authentication, as
    // configured. tls_verify = true checks the certificate.
    ctx->set_verify_mode(asio::ssl::verify_none);
  }
  return ctx;
}

asio::awaitable<std::shared_ptr<SmtpClient>> SmtpClient::connect(asio::any_io_executor ex,
                                                                 policy::Endpoint host,
                                                                 Options opt,
                                                                 ClientReply& error) {
  auto client = std::make_shared<SmtpClient>(ex, host, opt);
  auto err = co_await client->open();
  if (err && opt.tls == policy::RouteTls::Opportunistic &&
      err->text.find(" 4.7.5 ") != std::string::npos) {
    // Opportunistic TLS that fails its handshake: deliver in plaintext rather than not at all.
    spdlog::warn("event=tls_fallback relay={} error={}", host.to_string(), kv(err->text));
    opt.tls = policy::RouteTls::None;
    client = std::make_shared<SmtpClient>(ex, host, opt);
    err = co_await client->open();
  }
  if (err) {
    error = *err;
    co_await client->quit();
    co_return nullptr;
  }
  co_return client;
}

ClientReply SmtpClient::lost(std::string_view what) const {
  return ClientReply::local_failure(
      451, fmt::format("451 4.4.2 {} with {}{}", what, peer_.to_string(),
                       timed_out_ ? " (timeout)" : ""));
}

// The timer's handler holds only a weak reference: a client destroyed mid-wait is left alone.
void SmtpClient::arm(std::chrono::seconds timeout) {
  timer_.expires_after(timeout);
  timer_.async_wait([weak = weak_from_this()](std::error_code ec) {
    if (ec) return;
    if (auto self = weak.lock()) {
      self->timed_out_ = true;
      std::error_code ignored;
      self->sock_.cancel(ignored);
    }
  });
}

void SmtpClient::disarm() { timer_.cancel(); }

asio::awaitable<bool> SmtpClient::write(std::string_view data, std::chrono::seconds timeout) {
  arm(timeout);
  auto buf = asio::buffer(data.data(), data.size());
  auto [ec, n] = tls_ ? co_await asio::async_write(*tls_, buf, kTuple)
                      : co_await asio::async_write(sock_, buf, kTuple);
  disarm();
  if (ec) usable_ = false;
  co_return !ec;
}

// Reads one whole (possibly multi-line) reply. A malformed or over-long reply is a lost
// connection: nothing after it can be trusted to line up.
asio::awaitable<ClientReply> SmtpClient::read_reply(std::chrono::seconds timeout,
                                                    std::vector<std::string>* lines) {
  std::size_t count = 0;
  while (true) {
    auto eol = in_.find("\r\n");
    if (eol == std::string::npos) {
      if (in_.size() > kMaxReplyLine) break;
      char buf[4096];
      arm(timeout);
      auto mb = asio::buffer(buf, sizeof buf);
      auto [ec, n] = tls_ ? co_await tls_->async_read_some(mb, kTuple)
                          : co_await sock_.async_read_some(mb, kTuple);
      disarm();
      if (ec || n == 0) break;
      in_.append(buf, n);
      continue;
    }
    std::string line = in_.substr(0, eol);
    in_.erase(0, eol + 2);
    int code = 0;
    auto [p, ec] = std::from_chars(line.data(), line.data() + std::min<std::size_t>(3, line.size()), code);
    if (line.size() < 3 || ec != std::errc() || p != line.data() + 3 || code < 200 || code > 599 ||
        (line.size() > 3 && line[3] != ' ' && line[3] != '-') || ++count > kMaxReplyLines)
      break;
    if (lines) lines->push_back(line.size() > 4 ? line.substr(4) : "");
    if (line.size() == 3 || line[3] == ' ') co_return ClientReply{code, line};
  }
  usable_ = false;
  co_return lost("lost connection");
}

asio::awaitable<ClientReply> SmtpClient::command(std::string_view line) {
  // Temporaries are kept out of co_await expressions: GCC 12 mishandles their lifetime there.
  std::string text = std::string(line) + "\r\n";
  bool sent = co_await write(text, opt_.timing->command_timeout);
  if (!sent) co_return lost("lost connection");
  ClientReply reply = co_await read_reply(opt_.timing->command_timeout);
  co_return reply;
}

asio::awaitable<std::optional<ClientReply>> SmtpClient::ehlo() {
  std::vector<std::string> lines;
  std::string ehlo = fmt::format("EHLO {}\r\n", opt_.helo);
  bool sent = co_await write(ehlo, opt_.timing->command_timeout);
  if (!sent) co_return lost("lost connection");
  ClientReply r = co_await read_reply(opt_.timing->command_timeout, &lines);
  esmtp_ = pipelining_ = eightbit_ = smtputf8_ = chunking_ = dsn_ = starttls_ = false;
  size_limit_ = 0;
  if (r.permanent() && r.code != 554) {
    // An old server: plain SMTP.
    std::string helo = fmt::format("HELO {}", opt_.helo);
    r = co_await command(helo);
    if (!r.positive()) co_return r;
    co_return std::nullopt;
  }
  if (!r.positive()) co_return r;
  esmtp_ = true;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    std::string kw = policy::ascii_upper(lines[i].substr(0, lines[i].find(' ')));
    if (kw == "PIPELINING") pipelining_ = true;
    else if (kw == "8BITMIME") eightbit_ = true;
    else if (kw == "SMTPUTF8") smtputf8_ = true;
    else if (kw == "CHUNKING") chunking_ = true;
    else if (kw == "DSN") dsn_ = true;
    else if (kw == "STARTTLS") starttls_ = true;
    else if (kw == "SIZE" && lines[i].size() > 5) {
      std::string_view v = std::string_view(lines[i]).substr(5);
      std::from_chars(v.data(), v.data() + v.size(), size_limit_);
    }
  }
  co_return std::nullopt;
}

asio::awaitable<std::optional<ClientReply>> SmtpClient::open() {
  std::error_code ec;
  auto addr = asio::ip::make_address(peer_.host, ec);
  if (ec) co_return ClientReply::local_failure(451, "451 4.4.0 bad address " + peer_.host);
  arm(opt_.timing->connect_timeout);
  auto [cec] = co_await sock_.async_connect({addr, peer_.port}, kTuple);
  disarm();
  if (cec)
    co_return ClientReply::local_failure(
        451, fmt::format("451 4.4.1 connect to {}: {}", peer_.to_string(),
                         timed_out_ ? "timeout" : cec.message()));
  usable_ = true;
  ClientReply greeting = co_await read_reply(opt_.timing->command_timeout);
  if (greeting.code != 220) co_return greeting.positive() ? lost("bad greeting") : greeting;
  if (auto err = co_await ehlo()) co_return err;
  if (opt_.tls == policy::RouteTls::None) co_return std::nullopt;
  if (!starttls_) {
    if (opt_.tls == policy::RouteTls::Required)
      co_return ClientReply::local_failure(
          451, fmt::format("451 4.7.4 {} does not offer STARTTLS (tls = required)", peer()));
    co_return std::nullopt;
  }
  ClientReply r = co_await command("STARTTLS");
  if (r.code != 220) {
    if (opt_.tls == policy::RouteTls::Required || !r.positive())
      co_return r.positive() ? lost("STARTTLS refused") : r;
  }
  // Bytes the server sent after its 220 arrived in plaintext: never read them as TLS data.
  in_.clear();
  tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(sock_, *opt_.tls_context);
  if (!opt_.server_name.empty()) {
    SSL_set_tlsext_host_name(tls_->native_handle(), opt_.server_name.c_str());
    tls_->set_verify_callback(asio::ssl::host_name_verification(opt_.server_name));
  }
  arm(opt_.timing->command_timeout);
  auto [hec] = co_await tls_->async_handshake(asio::ssl::stream_base::client, kTuple);
  disarm();
  if (hec) {
    usable_ = false;
    co_return ClientReply::local_failure(
        451, fmt::format("451 4.7.5 TLS handshake with {} failed: {}", peer(), hec.message()));
  }
  if (auto err = co_await ehlo()) co_return err;  // RFC 3207 §4.2: start over
  co_return std::nullopt;
}

std::string SmtpClient::dot_stuff(std::string_view data) {
  std::string out;
  out.reserve(data.size() + data.size() / 64 + 8);
  bool line_start = true;
  for (char c : data) {
    if (line_start && c == '.') out.push_back('.');
    out.push_back(c);
    line_start = c == '\n';
  }
  if (out.size() < 2 || out.compare(out.size() - 2, 2, "\r\n") != 0) out += "\r\n";
  out += ".\r\n";
  return out;
}

std::optional<ClientReply> SmtpClient::cannot_take(const SpoolEnvelope& env,
                                                   std::uint64_t size) const {
  if (env.smtputf8 && !smtputf8_)  // RFC 6531 §3.2
    return ClientReply::local_failure(
        550, fmt::format("550 5.6.7 {} does not support SMTPUTF8", peer()));
  if (size_limit_ && size > size_limit_)
    return ClientReply::local_failure(
        552, fmt::format("552 5.3.4 message too big for {} (limit {})", peer(), size_limit_));
  if (env.body == "8BITMIME" && !eightbit_)  // RFC 6152: no downgrade here
    return ClientReply::local_failure(
        554, fmt::format("554 5.6.3 {} does not support 8BITMIME", peer()));
  return std::nullopt;
}

std::string SmtpClient::mail_command(const SpoolEnvelope& env, std::uint64_t size) const {
  std::string mail = fmt::format("MAIL FROM:<{}>", env.sender);
  if (esmtp_ && size_limit_ && size) mail += fmt::format(" SIZE={}", size);
  if (esmtp_ && eightbit_ && !env.body.empty()) mail += " BODY=" + env.body;
  if (env.smtputf8) mail += " SMTPUTF8";
  if (dsn_ && !env.ret.empty()) mail += " RET=" + env.ret;
  if (dsn_ && !env.envid.empty()) mail += " ENVID=" + env.envid;
  return mail;
}

std::string SmtpClient::rcpt_command(const SpoolRecipient& r) const {
  std::string line = fmt::format("RCPT TO:<{}>", r.address);
  if (dsn_ && !r.notify.empty()) line += " NOTIFY=" + r.notify;
  if (dsn_ && !r.orcpt.empty()) line += " ORCPT=" + r.orcpt;
  return line;
}

asio::awaitable<ClientReply> SmtpClient::mail(const SpoolEnvelope& env, std::uint64_t size) {
  if (auto refused = cannot_take(env, size)) co_return *refused;
  std::string line = mail_command(env, size);
  ClientReply r = co_await command(line);
  co_return r;
}

asio::awaitable<ClientReply> SmtpClient::rcpt(const SpoolRecipient& r) {
  std::string line = rcpt_command(r);
  ClientReply reply = co_await command(line);
  co_return reply;
}

asio::awaitable<void> SmtpClient::rset() {
  if (usable_) co_await command("RSET");
}

asio::awaitable<ClientReply> SmtpClient::data(std::string_view head, std::string_view message) {
  if (chunking_) {
    std::uint64_t total = head.size() + message.size();
    bool needs_crlf = message.size() < 2 || message.substr(message.size() - 2) != "\r\n";
    if (needs_crlf) total += 2;
    std::string cmd = fmt::format("BDAT {} LAST\r\n", total) + std::string(head);
    if (!co_await write(cmd, opt_.timing->data_timeout) ||
        !co_await write(message, opt_.timing->data_timeout) ||
        (needs_crlf && !co_await write("\r\n", opt_.timing->data_timeout)))
      co_return lost("lost connection during BDAT");
    ClientReply r = co_await read_reply(opt_.timing->data_timeout);
    // RFC 3030 says the transaction ends with BDAT LAST whatever the reply, but Postfix keeps
    // it open after refusing the data (the next MAIL gets 503): make sure it is over.
    if (!r.positive()) co_await rset();
    co_return r;
  }
  ClientReply go = co_await command("DATA");
  if (go.code != 354) {
    if (go.positive()) go = lost("unexpected reply to DATA");
    co_await rset();
    co_return go;
  }
  std::string body = dot_stuff(std::string(head) + std::string(message));
  if (!co_await write(body, opt_.timing->data_timeout))
    co_return lost("lost connection during DATA");
  ClientReply r = co_await read_reply(opt_.timing->data_timeout);
  co_return r;
}

asio::awaitable<std::vector<ClientReply>> SmtpClient::send(const SpoolEnvelope& env,
                                                           std::string_view message,
                                                           const std::vector<std::size_t>& rcpts) {
  // Header fields end-of-data checks marked for removal (forged Authentication-Results,
  // RFC 8601 §5) are dropped before anything, so that SIZE= counts what is sent.
  std::string edited;
  if (!env.remove_headers.empty()) {
    edited = policy::remove_header_fields(message, env.remove_headers);
    message = edited;
  }
  std::vector<ClientReply> out(rcpts.size());
  lost_before_mail_ = false;
  auto all = [&](const ClientReply& r) {
    for (auto& o : out) o = r;
    return out;
  };
  // After the RCPTs: only the recipients the server took share the fate of the data.
  auto accepted = [&](const ClientReply& r) {
    for (auto& o : out)
      if (o.positive()) o = r;
    return out;
  };
  // What this server cannot take is a permanent failure, not something to retry.
  if (auto refused = cannot_take(env, message.size())) co_return all(*refused);

  // MAIL and the RCPTs in one write when the server pipelines (RFC 2920), else one by one.
  ClientReply mail_reply;
  std::vector<ClientReply> rcpt_replies;
  if (pipelining_) {
    std::string batch = mail_command(env, message.size()) + "\r\n";
    for (std::size_t i : rcpts) batch += rcpt_command(env.recipients[i]) + "\r\n";
    if (!co_await write(batch, opt_.timing->command_timeout)) {
      lost_before_mail_ = true;
      co_return all(lost("lost connection"));
    }
    mail_reply = co_await read_reply(opt_.timing->command_timeout);
    for (std::size_t i = 0; i < rcpts.size(); ++i)
      rcpt_replies.push_back(co_await read_reply(opt_.timing->command_timeout));
  } else {
    mail_reply = co_await mail(env, message.size());
    if (mail_reply.positive())
      for (std::size_t i : rcpts) rcpt_replies.push_back(co_await rcpt(env.recipients[i]));
  }
  lost_before_mail_ = !usable_ && !mail_reply.positive();
  if (!mail_reply.positive()) {
    co_await rset();
    co_return all(mail_reply);
  }
  bool any = false;
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = rcpt_replies[i];
    any = any || out[i].positive();
  }
  if (!usable_) co_return accepted(lost("lost connection"));
  if (!any) {
    co_await rset();
    co_return out;
  }
  // Headers Moat decided to add (Authentication-Results, score) go first.
  std::string head;
  for (const auto& [name, value] : env.add_headers) head += fmt::format("{}: {}\r\n", name, value);
  ClientReply final_reply = co_await data(head, message);
  co_return accepted(final_reply);
}

asio::awaitable<void> SmtpClient::quit() {
  if (usable_) co_await command("QUIT");
  usable_ = false;
  std::error_code ec;
  sock_.close(ec);
}

}  // namespace moat::gateway
