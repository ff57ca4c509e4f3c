#include "gateway/smtp/session.hpp"

#include <fmt/format.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/ssl/stream.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <chrono>
#include <ctime>
#include <optional>

#include "gateway/blocking.hpp"
#include "gateway/log.hpp"
#include "gateway/relay/proxy_backend.hpp"
#include "gateway/rfc5322_date.hpp"
#include "gateway/smtp/body_filter.hpp"
#include "gateway/smtp/command.hpp"
#include "gateway/smtp/line_buffer.hpp"
#include "policy/header_fields.hpp"

namespace moat::gateway {
namespace {

using asio::ip::tcp;
using policy::Action;
using policy::Reply;
using policy::Stage;
using policy::Verdict;
using Clock = std::chrono::steady_clock;

// Command line limits including CRLF: 512 octets (RFC 5321 §4.5.3.1.4), raised by the extensions
// Moat offers for the commands that carry their parameters: MAIL by SIZE (RFC 1870, 26),
// SMTPUTF8 (RFC 6531, 10) and RET/ENVID (RFC 3461, 100); RCPT by NOTIFY/ORCPT (RFC 3461, 500).
constexpr std::size_t kMaxCommandLine = 512;
constexpr std::size_t kMaxMailLine = kMaxCommandLine + 26 + 10 + 100;
constexpr std::size_t kMaxRcptLine = kMaxCommandLine + 500;
constexpr std::size_t kReadSpace = 4096;      // read size beyond the longest line
constexpr auto kTuple = asio::experimental::as_tuple(asio::use_awaitable);

// The first line of an HTTP request (method, target, version): never an SMTP command.
bool looks_like_http(std::string_view line) {
  for (std::string_view method : {"GET ", "POST ", "HEAD ", "PUT ", "CONNECT ", "OPTIONS "})
    if (line.substr(0, method.size()) == method) return true;
  return false;
}

// Session states, as bits so that a command's allowed states are one mask.
enum State : unsigned {
  kNoHelo = 1,  // greeted, no EHLO/HELO yet
  kReady = 2,   // EHLO/HELO done, no transaction
  kMail = 4,    // MAIL accepted, no recipient yet
  kRcpt = 8,    // at least one recipient accepted
};
constexpr unsigned kAnyState = kNoHelo | kReady | kMail | kRcpt;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, Services& svc, const policy::Listener& listener, std::string sid)
      : sock_(std::move(socket)),
        svc_(svc),
        cfg_(svc.config.server),
        in_(std::max(cfg_.max_line_length + 1, kMaxRcptLine) + kReadSpace),
        watchdog_(sock_.get_executor()),
        started_(Clock::now()),
        session_end_(started_ + cfg_.max_session_time) {
    ctx_.session.sid = std::move(sid);
    std::error_code ec;
    auto ep = sock_.remote_endpoint(ec);
    if (!ec) {
      ctx_.session.client_ip =
          policy::IpAddress::parse(ep.address().to_string()).value_or(policy::IpAddress{});
      ctx_.session.client_port = ep.port();
    }
    watchdog_.expires_at(Clock::time_point::max());
    if (listener.mode == policy::ListenerMode::Proxy)
      proxy_.emplace(sock_.get_executor(), svc.config, listener, *svc.proxy_tls);
  }

  asio::awaitable<void> run();
  // Ends the session's watchdog and closes the socket; safe to call more than once.
  void close();

 private:
  using Handler = asio::awaitable<void> (Session::*)(std::string_view args);
  // The command table: which verb may run in which state, before STARTTLS when TLS is
  // required, and whether it may sit inside a PIPELINING batch (RFC 2920 §3.1: if not, the
  // batch ends with it and its replies are flushed at once).
  struct CommandSpec {
    Verb verb;
    unsigned states;
    bool before_tls;
    bool pipelinable;
    Handler handler;
    const char* wrong_state;  // the 503 text when the state does not allow it
  };
  static const CommandSpec kCommands[];

  // --- I/O -------------------------------------------------------------------------------
  void arm(std::chrono::seconds timeout);
  void disarm() { io_pending_ = false; }
  asio::awaitable<void> watchdog(std::shared_ptr<Session> self);
  asio::awaitable<bool> fill(std::chrono::seconds timeout);
  asio::awaitable<bool> flush();
  asio::awaitable<std::optional<LineBuffer::Line>> read_line(std::size_t max,
                                                             std::chrono::seconds timeout);
  void send(const Reply& r);
  void send(int code, std::string_view enhanced, std::string_view text) {
    send(Reply{code, std::string(enhanced), std::string(text)});
  }
  void send_closing(std::string_view enhanced, std::string_view text) {
    send(421, enhanced, fmt::format("{} {}", cfg_.hostname, text));
    closing_ = true;
  }

  // --- commands ---------------------------------------------------------------------------
  asio::awaitable<void> dispatch(std::string_view line);
  asio::awaitable<void> cmd_ehlo(std::string_view args);
  asio::awaitable<void> cmd_helo(std::string_view args);
  asio::awaitable<void> cmd_starttls(std::string_view args);
  asio::awaitable<void> cmd_mail(std::string_view args);
  asio::awaitable<void> cmd_rcpt(std::string_view args);
  asio::awaitable<void> cmd_data(std::string_view args);
  asio::awaitable<void> cmd_bdat(std::string_view args);
  asio::awaitable<void> cmd_rset(std::string_view args);
  asio::awaitable<void> cmd_noop(std::string_view args);
  asio::awaitable<void> cmd_quit(std::string_view args);
  asio::awaitable<void> cmd_vrfy(std::string_view args);
  asio::awaitable<void> cmd_expn(std::string_view args);
  asio::awaitable<void> cmd_help(std::string_view args);

  // --- transaction ------------------------------------------------------------------------
  asio::awaitable<void> greet(std::string_view args, bool esmtp);
  asio::awaitable<bool> quiet_before_greeting();
  bool bad_command();  // counts a protocol error; true when the session must end
  // Runs the pipeline for `stage`; a final reject/tempfail is sent and true returned.
  asio::awaitable<bool> refused_at(Stage stage);
  bool begin_message();  // opens the spool file and writes the Received header
  bool begin_quarantine();  // proxy mode: spools the message held in memory
  Reply spool_failure(std::string_view why) const;
  asio::awaitable<bool> read_chunk(std::uint64_t size, bool keep);
  void write_out();
  asio::awaitable<void> end_message();
  asio::awaitable<void> relay_message();  // proxy mode: the message goes to the backend now
  SpoolEnvelope spool_envelope() const;
  SpoolRecipient spool_recipient(const policy::Recipient& r) const;
  void reset_transaction();
  std::string received_header() const;
  std::string protocol() const;
  std::string prefix() const {
    return fmt::format("sid={} qid={}", ctx_.session.sid, ctx_.qid.empty() ? "-" : ctx_.qid);
  }
  void log_message(std::string_view disposition, const Reply& reply, std::string_view check);

  tcp::socket sock_;
  std::optional<asio::ssl::stream<tcp::socket&>> tls_;
  Services& svc_;
  const policy::ServerConfig& cfg_;
  LineBuffer in_;
  std::string out_;

  asio::steady_timer watchdog_;
  Clock::time_point started_;
  Clock::time_point session_end_;
  Clock::time_point deadline_ = Clock::time_point::max();
  bool io_pending_ = false;
  bool timed_out_ = false;
  bool closed_ = false;
  bool closing_ = false;  // a 421/221 was queued: flush it and end

  policy::MessageContext ctx_;
  unsigned state_ = kNoHelo;
  std::size_t bad_commands_ = 0;
  std::size_t messages_ = 0;
  std::size_t rejected_rcpts_ = 0;

  // The message being received.
  std::unique_ptr<SpoolFile> file_;  // queue mode (and proxy quarantine)
  std::optional<BodyFilter> filter_;
  std::string chunk_;          // filtered bytes on their way to file_
  bool bdat_ = false;          // a BDAT sequence is under way
  Clock::time_point data_started_;

  std::optional<ProxyBackend> proxy_;  // set on a proxy listener
};

const Session::CommandSpec Session::kCommands[] = {
    {Verb::Ehlo, kAnyState, true, false, &Session::cmd_ehlo, ""},
    {Verb::Helo, kAnyState, true, false, &Session::cmd_helo, ""},
    {Verb::StartTls, kReady, true, false, &Session::cmd_starttls,
     "Error: STARTTLS is allowed after EHLO and outside a mail transaction"},
    {Verb::Mail, kReady | kMail | kRcpt, false, true, &Session::cmd_mail,
     "Error: send HELO/EHLO first"},
    {Verb::Rcpt, kMail | kRcpt, false, true, &Session::cmd_rcpt, "Error: need MAIL command"},
    {Verb::Data, kMail | kRcpt, false, false, &Session::cmd_data, "Error: need MAIL command"},
    // BDAT runs in every state: its chunk must be read off the wire whatever the answer.
    {Verb::Bdat, kAnyState, true, false, &Session::cmd_bdat, ""},
    {Verb::Rset, kAnyState, true, true, &Session::cmd_rset, ""},
    {Verb::Noop, kAnyState, true, false, &Session::cmd_noop, ""},
    {Verb::Quit, kAnyState, true, false, &Session::cmd_quit, ""},
    {Verb::Vrfy, kAnyState, false, false, &Session::cmd_vrfy, ""},
    {Verb::Expn, kAnyState, false, false, &Session::cmd_expn, ""},
    {Verb::Help, kAnyState, true, false, &Session::cmd_help, ""},
};

// ---------------------------------------------------------------------------------------------
// I/O

void Session::arm(std::chrono::seconds timeout) {
  deadline_ = std::min(Clock::now() + timeout, session_end_);
  io_pending_ = true;
  if (watchdog_.expiry() > deadline_) watchdog_.expires_at(deadline_);  // wakes the watchdog
}

// One timer per session, re-armed lazily: an I/O call only moves deadline_, and the timer
// catches up when it fires. On expiry during I/O the socket is cancelled, which completes
// the pending read or write with an error that the session sees with timed_out_ set.
asio::awaitable<void> Session::watchdog([[maybe_unused]] std::shared_ptr<Session> self) {
  while (!closed_) {
    co_await watchdog_.async_wait(kTuple);
    if (closed_) break;
    auto now = Clock::now();
    if (io_pending_ && now >= deadline_) {
      timed_out_ = true;
      std::error_code ec;
      sock_.cancel(ec);
      watchdog_.expires_at(Clock::time_point::max());
    } else if (now >= watchdog_.expiry()) {
      watchdog_.expires_at(io_pending_ ? deadline_ : Clock::time_point::max());
    }
  }
}

asio::awaitable<bool> Session::flush() {
  if (out_.empty()) co_return true;
  arm(cfg_.command_timeout);
  auto [ec, n] = tls_ ? co_await asio::async_write(*tls_, asio::buffer(out_), kTuple)
                      : co_await asio::async_write(sock_, asio::buffer(out_), kTuple);
  disarm();
  out_.clear();
  co_return !ec;
}

asio::awaitable<bool> Session::fill(std::chrono::seconds timeout) {
  // Replies wait in out_ while more pipelined commands are buffered (RFC 2920); once the
  // input runs dry, whatever is pending goes out before we block.
  if (!co_await flush()) co_return false;
  auto area = in_.write_area();
  arm(timeout);
  auto buf = asio::buffer(area.data(), area.size());
  auto [ec, n] = tls_ ? co_await tls_->async_read_some(buf, kTuple)
                      : co_await sock_.async_read_some(buf, kTuple);
  disarm();
  if (ec || n == 0) {
    if (timed_out_ && !closed_) {
      spdlog::info("{} event=timeout state={}", prefix(), state_);
      send_closing("4.4.2", "Error: timeout exceeded");
      timed_out_ = false;
      co_await flush();
    }
    co_return false;
  }
  in_.commit(n);
  co_return true;
}

asio::awaitable<std::optional<LineBuffer::Line>> Session::read_line(std::size_t max,
                                                                    std::chrono::seconds timeout) {
  while (true) {
    if (auto line = in_.next_line(max)) co_return line;
    if (!co_await fill(timeout)) co_return std::nullopt;
  }
}

void Session::send(const Reply& r) {
  // Reply text can come from configuration or rules: keep it on one line whatever it holds.
  std::string text = r.text;
  for (char& c : text)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  if (r.enhanced.empty()) out_ += fmt::format("{} {}\r\n", r.code, text);
  else out_ += fmt::format("{} {} {}\r\n", r.code, r.enhanced, text);
}

// ---------------------------------------------------------------------------------------------
// The dialogue

asio::awaitable<void> Session::run() {
  asio::co_spawn(sock_.get_executor(), watchdog(shared_from_this()), asio::detached);
  spdlog::info("{} event=connect client={} port={}", prefix(), ctx_.session.client_ip.to_string(),
               ctx_.session.client_port);
  if (!co_await refused_at(Stage::Connect) && co_await quiet_before_greeting()) {
    send(220, "", fmt::format("{} ESMTP Moat", cfg_.hostname));
    while (!closing_) {
      auto line = co_await read_line(kMaxRcptLine, cfg_.command_timeout);
      if (!line) break;
      if (line->too_long) {
        send(500, "5.5.2", "Error: command line too long");
        bad_command();
        continue;
      }
      // Copy: handlers read more input (DATA, BDAT), which moves the buffer under the view.
      std::string command(line->text);
      co_await dispatch(command);
    }
  }
  co_await flush();
  close();
  if (proxy_) co_await proxy_->quit();
  reset_transaction();  // an unfinished transaction's file is removed; its qid is not logged
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_);
  spdlog::info("{} event=disconnect messages={} rejected_rcpts={} bad_commands={} tls={} ms={}",
               prefix(), messages_, rejected_rcpts_, bad_commands_, ctx_.session.tls ? 1 : 0,
               ms.count());
}

// Pre-greet test ([pregreet] wait): a legitimate client waits for the banner; a bot that
// talks first is refused at once with 554 in place of the greeting (RFC 5321 §3.1). A client
// that passed is remembered for cache_ttl and not made to wait again.
asio::awaitable<bool> Session::quiet_before_greeting() {
  const auto& pg = svc_.config.pregreet;
  std::string ip = ctx_.session.client_ip.to_string();
  if (pg.wait.count() == 0 || svc_.pregreet_passed.contains(ip)) co_return true;
  asio::steady_timer timer(sock_.get_executor(), pg.wait);
  bool expired = false;
  timer.async_wait([this, &expired](std::error_code ec) {
    if (ec) return;  // cancelled: `expired` may be gone, touch nothing
    expired = true;
    std::error_code ignored;
    sock_.cancel(ignored);
  });
  auto [ec] = co_await sock_.async_wait(tcp::socket::wait_read, kTuple);
  timer.cancel();
  if (expired) {
    svc_.pregreet_passed.add(ip, pg.cache_ttl);
    co_return true;
  }
  if (!ec) {
    // Talked first (or hung up: then the reply goes nowhere, which is fine).
    ctx_.add_finding("pregreet.early_talker", 0);
    spdlog::info("{} event=pregreet_violation client={}", prefix(), ip);
    send(554, "5.7.1", fmt::format("{} Protocol error: talked before the greeting", cfg_.hostname));
  }
  closing_ = true;
  co_return false;
}

void Session::close() {
  closed_ = true;
  watchdog_.cancel();
  std::error_code ec;
  sock_.shutdown(tcp::socket::shutdown_both, ec);
  sock_.close(ec);
}

bool Session::bad_command() {
  if (++bad_commands_ < cfg_.max_bad_commands) return false;
  spdlog::info("{} event=too_many_errors count={}", prefix(), bad_commands_);
  send_closing("4.7.0", "Error: too many errors");
  return true;
}

asio::awaitable<void> Session::dispatch(std::string_view line) {
  // Only CRLF ends a line; a bare CR or LF inside a command line is refused outright, as
  // is NUL, so no two parsers can read this line differently.
  if (line.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) {
    send(500, "5.5.2", "Error: bare CR, LF or NUL in command line");
    bad_command();
    co_return;
  }
  Command cmd = parse_command(line);
  std::size_t limit = cmd.verb == Verb::Rcpt   ? kMaxRcptLine
                      : cmd.verb == Verb::Mail ? kMaxMailLine
                                               : kMaxCommandLine;
  if (line.size() + 2 > limit) {
    send(500, "5.5.2", "Error: command line too long");
    bad_command();
    co_return;
  }
  const CommandSpec* spec = nullptr;
  for (const auto& s : kCommands)
    if (s.verb == cmd.verb) spec = &s;
  if (!spec && state_ == kNoHelo && looks_like_http(line)) {
    // A proxy or web client (or an attack through one) speaking HTTP to port 25: end it.
    spdlog::info("{} event=non_smtp_command command={}", prefix(), kv(line.substr(0, 64)));
    send(554, "5.7.1", "Error: this is an SMTP server");
    closing_ = true;
    co_return;
  }
  if (!spec) {
    send(500, "5.5.2", "Error: command not recognized");
    bad_command();
    co_return;
  }
  if (svc_.config.tls.require && !ctx_.session.tls && !spec->before_tls) {
    send(530, "5.7.0", "Must issue a STARTTLS command first");
    bad_command();
    co_return;
  }
  if (!(spec->states & state_)) {
    send(503, "5.5.1", spec->wrong_state);
    bad_command();
    co_return;
  }
  co_await (this->*spec->handler)(cmd.args);
  if (!spec->pipelinable) co_await flush();
}

asio::awaitable<bool> Session::refused_at(Stage stage) {
  Verdict v = co_await svc_.pipeline.run(stage, ctx_);
  if (v.action != Action::Reject && v.action != Action::TempFail) co_return false;
  // A check must not be able to turn a refusal into a success by a wrong code.
  Reply r = v.reply;
  bool reject = v.action == Action::Reject;
  if (reject && (r.code < 500 || r.code > 599)) r = {550, "5.7.1", r.text};
  if (!reject && (r.code < 400 || r.code > 499)) r = {451, "4.7.1", r.text};
  if (r.enhanced.empty() || r.enhanced[0] != static_cast<char>('0' + r.code / 100))
    r.enhanced = reject ? "5.7.1" : "4.7.1";
  if (r.text.empty()) r.text = reject ? "Rejected by policy" : "Try again later";
  std::string rcpt = ctx_.current_rcpt ? kv("<" + ctx_.current_rcpt->address + ">") : "-";
  spdlog::info("{} event=refused stage={} check={} rcpt={} reply={}", prefix(),
               policy::to_string(stage), kv(v.check), rcpt,
               kv(fmt::format("{} {} {}", r.code, r.enhanced, r.text)));
  if (stage == Stage::Connect) {
    // In place of the greeting only 554 (refused) and 421 (try later) make sense.
    send(reject ? 554 : 421, r.enhanced, fmt::format("{} {}", cfg_.hostname, r.text));
    closing_ = true;
  } else {
    send(r);
  }
  co_return true;
}

asio::awaitable<void> Session::greet(std::string_view args, bool esmtp) {
  while (!args.empty() && args.back() == ' ') args.remove_suffix(1);
  if (args.empty() || !(policy::valid_domain(args, true) || policy::valid_address_literal(args))) {
    send(501, "5.5.4", esmtp ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
    bad_command();
    co_return;
  }
  // RFC 5321 §4.1.4: EHLO/HELO resets the session to the state after the greeting.
  reset_transaction();
  ctx_.session.helo = std::string(args);
  ctx_.session.esmtp = esmtp;
  state_ = kNoHelo;
  if (co_await refused_at(Stage::Helo)) co_return;
  state_ = kReady;
  if (!esmtp) {
    send(250, "", cfg_.hostname);
    co_return;
  }
  std::vector<std::string> lines = {cfg_.hostname,
                                    "PIPELINING",
                                    fmt::format("SIZE {}", cfg_.max_message_size),
                                    "8BITMIME",
                                    "SMTPUTF8",
                                    "ENHANCEDSTATUSCODES",
                                    "CHUNKING",
                                    "DSN"};
  if (!ctx_.session.tls) lines.push_back("STARTTLS");
  for (std::size_t i = 0; i < lines.size(); ++i)
    out_ += fmt::format("250{}{}\r\n", i + 1 == lines.size() ? ' ' : '-', lines[i]);
}

asio::awaitable<void> Session::cmd_ehlo(std::string_view args) { co_await greet(args, true); }
asio::awaitable<void> Session::cmd_helo(std::string_view args) { co_await greet(args, false); }

asio::awaitable<void> Session::cmd_starttls(std::string_view args) {
  if (!args.empty()) {
    send(501, "5.5.4", "Syntax: STARTTLS");
    co_return;
  }
  if (ctx_.session.tls || !ctx_.session.esmtp) {
    send(503, "5.5.1", ctx_.session.tls ? "Error: TLS already active" : "Error: send EHLO first");
    co_return;
  }
  send(220, "2.0.0", "Ready to start TLS");
  if (!co_await flush()) {
    closing_ = true;
    co_return;
  }
  // STARTTLS command injection (CVE-2011-0411 and kin): anything that arrived after the
  // STARTTLS line was sent in plaintext, before the handshake, and must never be read as if
  // it came through TLS. Throw it away.
  if (std::size_t stale = in_.pending().size()) {
    spdlog::info("{} event=starttls_injection discarded_bytes={}", prefix(), stale);
    in_.clear();
  }
  tls_.emplace(sock_, svc_.tls);
  arm(cfg_.command_timeout);
  auto [ec] = co_await tls_->async_handshake(asio::ssl::stream_base::server, kTuple);
  disarm();
  if (ec) {
    spdlog::info("{} event=tls_failed error={}", prefix(), kv(ec.message()));
    closing_ = true;  // nothing more can be said in plaintext or in TLS
    tls_.reset();
    co_return;
  }
  SSL* ssl = tls_->native_handle();
  ctx_.session.tls = true;
  ctx_.session.tls_version = SSL_get_version(ssl);
  ctx_.session.tls_cipher = SSL_get_cipher_name(ssl);
  // RFC 3207 §4.2: forget everything learnt before TLS; the client starts again with EHLO.
  reset_transaction();
  ctx_.session.helo.clear();
  ctx_.session.esmtp = false;
  state_ = kNoHelo;
  spdlog::info("{} event=tls version={} cipher={}", prefix(), ctx_.session.tls_version,
               ctx_.session.tls_cipher);
}

asio::awaitable<void> Session::cmd_mail(std::string_view args) {
  if (state_ != kReady) {
    send(503, "5.5.1", "Error: nested MAIL command");
    bad_command();
    co_return;
  }
  policy::Envelope env;
  if (auto err = parse_mail(args, cfg_.max_message_size, env)) {
    send(*err);
    if (err->code == 501 || err->code == 555) bad_command();
    co_return;
  }
  ctx_.reset_transaction();
  ctx_.envelope = std::move(env);
  ctx_.qid = svc_.spool.new_qid();
  if (co_await refused_at(Stage::MailFrom)) {
    reset_transaction();
    co_return;
  }
  if (proxy_) {
    SpoolEnvelope env = spool_envelope();
    Reply r = co_await proxy_->mail(env, ctx_.envelope.declared_size.value_or(0), prefix());
    if (r.code / 100 != 2) {
      spdlog::info("{} event=refused stage=mail check=backend reply={}", prefix(),
                   kv(fmt::format("{} {} {}", r.code, r.enhanced, r.text)));
      send(r);
      reset_transaction();
      co_return;
    }
  }
  state_ = kMail;
  send(250, "2.1.0", "Ok");
}

asio::awaitable<void> Session::cmd_rcpt(std::string_view args) {
  if (ctx_.envelope.recipients.size() >= cfg_.max_recipients) {
    send(452, "4.5.3", "Error: too many recipients");
    ++rejected_rcpts_;
    co_return;
  }
  policy::Recipient rcpt;
  if (auto err = parse_rcpt(args, ctx_.envelope.smtputf8, rcpt)) {
    send(*err);
    ++rejected_rcpts_;
    if (err->code == 501 || err->code == 555) bad_command();
    co_return;
  }
  ctx_.current_rcpt = &rcpt;
  bool refused = co_await refused_at(Stage::RcptTo);
  ctx_.current_rcpt = nullptr;
  if (refused) {
    ++rejected_rcpts_;
    co_return;
  }
  if (rcpt.path.postmaster) {
    // RFC 5321 §4.5.1: <Postmaster> is ours; give it our first domain so it can be routed.
    const auto& domains = svc_.config.relay.domains;
    auto it = std::find_if(domains.begin(), domains.end(),
                           [](const std::string& d) { return d[0] != '.' && d[0] != '['; });
    rcpt.address = "postmaster@" + (it != domains.end() ? *it : cfg_.hostname);
  }
  if (proxy_) {
    // The backend's own recipient validation answers the client, live.
    SpoolRecipient sr = spool_recipient(rcpt);
    Reply r = co_await proxy_->rcpt(sr, prefix());
    if (r.code / 100 != 2) {
      spdlog::info("{} event=refused stage=rcpt check=backend rcpt={} reply={}", prefix(),
                   kv("<" + rcpt.address + ">"),
                   kv(fmt::format("{} {} {}", r.code, r.enhanced, r.text)));
      ++rejected_rcpts_;
      send(r);
      co_return;
    }
  }
  ctx_.envelope.recipients.push_back(std::move(rcpt));
  state_ = kRcpt;
  send(250, "2.1.5", "Ok");
}

std::string Session::protocol() const {
  const auto& s = ctx_.session;
  std::string p = ctx_.envelope.smtputf8 ? "UTF8SMTP" : s.esmtp ? "ESMTP" : "SMTP";
  if (s.tls) p += "S";
  return p;
}

// RFC 5321 §4.4 trace header, with TLS details as a comment like other MTAs write them.
std::string Session::received_header() const {
  const auto& s = ctx_.session;
  std::string ip = s.client_ip.is_v4() ? s.client_ip.to_string() : "IPv6:" + s.client_ip.to_string();
  std::string h = fmt::format("Received: from {} ([{}])\r\n\tby {} (Moat) with {} id {}", s.helo,
                              ip, cfg_.hostname, protocol(), ctx_.qid);
  if (s.tls) h += fmt::format("\r\n\t(using {} with cipher {})", s.tls_version, s.tls_cipher);
  if (ctx_.envelope.recipients.size() == 1)
    h += fmt::format("\r\n\tfor <{}>", ctx_.envelope.recipients[0].address);
  h += fmt::format(";\r\n\t{}\r\n", rfc5322_date());
  return h;
}

// Spool errors start with "4.3.1" when storage is full (spool.hpp): 452, else 451.
Reply Session::spool_failure(std::string_view why) const {
  spdlog::error("{} event=spool_error error={}", prefix(), kv(why));
  if (why.rfind("4.3.1", 0) == 0) return {452, "4.3.1", "Insufficient system storage"};
  return {451, "4.3.0", "Local error in processing"};
}

// Queue mode: opens the spool file and writes the Received header. Proxy mode keeps the
// message in memory only (ctx_.message) until the backend has it.
bool Session::begin_message() {
  if (!proxy_) {
    auto file = svc_.spool.create(ctx_.qid);
    if (!file) {
      send(spool_failure(file.error().message));
      return false;
    }
    file_ = std::move(*file);
    file_->write(received_header());
  }
  filter_.emplace(cfg_.max_message_size, cfg_.max_line_length, cfg_.bare_newline);
  data_started_ = Clock::now();
  return true;
}

bool Session::begin_quarantine() {
  auto file = svc_.spool.create(ctx_.qid);
  if (!file) {
    log_message("tempfail", spool_failure(file.error().message), "spool");
    send(spool_failure(file.error().message));
    reset_transaction();
    state_ = kReady;
    return false;
  }
  file_ = std::move(*file);
  file_->write(received_header());
  file_->write(ctx_.message);
  return true;
}

void Session::write_out() {
  if (file_) file_->write(chunk_);
  // End-of-data checks see the message as stored (after the body filter), without the
  // Received header Moat adds. Bounded by max_message_size: the filter stops emitting beyond it.
  ctx_.message += chunk_;
  chunk_.clear();
}

asio::awaitable<void> Session::cmd_data(std::string_view args) {
  if (!args.empty()) {
    send(501, "5.5.4", "Syntax: DATA");
    co_return;
  }
  if (bdat_) {
    send(503, "5.5.1", "Error: DATA cannot follow BDAT");
    co_return;
  }
  if (state_ != kRcpt) {
    send(554, "5.5.1", "Error: no valid recipients");  // RFC 2920 §3.1
    co_return;
  }
  if (!begin_message()) co_return;
  send(354, "", "End data with <CR><LF>.<CR><LF>");
  while (true) {
    // RFC 5321 §4.5.3.1.6: the line limit does not count the dot doubled for transparency, so
    // the wire may carry one octet more; the body filter holds the unstuffed line to the limit.
    auto line = co_await read_line(cfg_.max_line_length + 1, cfg_.data_timeout);
    if (!line) {
      spdlog::info("{} event=lost_during_data", prefix());
      reset_transaction();  // the unacknowledged file is removed
      closing_ = true;
      co_return;
    }
    if (line->too_long) {
      filter_->line_too_long();
      continue;
    }
    std::string_view text = line->text;
    if (text == ".") break;  // only <CRLF>.<CRLF> ends the data
    if (!text.empty() && text[0] == '.') text.remove_prefix(1);  // undo dot-stuffing
    filter_->feed_line(text, chunk_);
    if (chunk_.size() >= 32768) write_out();
  }
  co_await end_message();
}

asio::awaitable<bool> Session::read_chunk(std::uint64_t size, bool keep) {
  while (size > 0) {
    std::string_view have = in_.pending();
    if (have.empty()) {
      if (!co_await fill(cfg_.data_timeout)) co_return false;
      continue;
    }
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(size, have.size()));
    if (keep) {
      filter_->feed(have.substr(0, n), chunk_);
      write_out();
    }
    in_.consume(n);
    size -= n;
  }
  co_return true;
}

asio::awaitable<void> Session::cmd_bdat(std::string_view args) {
  auto bdat = parse_bdat(args);
  if (!bdat) {
    // Without a size we cannot know where the chunk ends, so what follows cannot be read as
    // commands: refuse and hang up.
    send(501, "5.5.4", "Syntax: BDAT size [LAST]");
    closing_ = true;
    co_return;
  }
  // Whatever the answer, the chunk's octets are read off the wire first (RFC 3030 §2).
  std::optional<Reply> refusal;
  if (svc_.config.tls.require && !ctx_.session.tls)
    refusal = Reply{530, "5.7.0", "Must issue a STARTTLS command first"};
  else if (state_ == kNoHelo || state_ == kReady)
    refusal = Reply{503, "5.5.1", "Error: need MAIL command"};
  else if (state_ == kMail)
    refusal = Reply{554, "5.5.1", "Error: no valid recipients"};
  if (!refusal && !bdat_) {
    if (!begin_message()) {
      refusal = Reply{0, "", ""};  // reply already queued
    } else {
      bdat_ = true;
    }
  }
  if (!co_await read_chunk(bdat->size, !refusal)) {
    reset_transaction();
    closing_ = true;
    co_return;
  }
  if (refusal) {
    if (refusal->code) send(*refusal);
    co_return;
  }
  if (filter_->error() != BodyFilter::Error::None) {
    // RFC 3030 §2: after a failed chunk the transaction is over; later BDATs get 503.
    if (proxy_) co_await proxy_->abandon();
    log_message("rejected", filter_->reply(), "smtp");
    send(filter_->reply());
    reset_transaction();
    state_ = kReady;
    co_return;
  }
  if (!bdat->last) {
    send(250, "2.0.0", fmt::format("{} octets received", bdat->size));
    co_return;
  }
  co_await end_message();
}

asio::awaitable<void> Session::end_message() {
  filter_->finish(chunk_);
  write_out();
  ++messages_;
  auto finish = [&](std::string_view disposition, const Reply& reply, std::string_view check) {
    log_message(disposition, reply, check);
    send(reply);
    reset_transaction();
    state_ = kReady;
  };
  if (filter_->error() != BodyFilter::Error::None) {
    if (proxy_) co_await proxy_->abandon();
    finish("rejected", filter_->reply(), "smtp");
    co_return;
  }
  ctx_.message_size = filter_->size();
  Verdict v = co_await svc_.pipeline.run(Stage::EndOfData, ctx_);
  std::string_view state = "active";
  std::string_view disposition = "queued";
  switch (v.action) {
    case Action::Reject:
    case Action::TempFail: {
      // refused_at() would run the pipeline again; render the verdict we have.
      bool reject = v.action == Action::Reject;
      Reply r = v.reply;
      if (r.code / 100 != (reject ? 5 : 4)) r = reject ? Reply{550, "5.7.1", r.text}
                                                      : Reply{451, "4.7.1", r.text};
      if (proxy_) co_await proxy_->abandon();
      finish(reject ? "rejected" : "tempfail", r, v.check);
      co_return;
    }
    case Action::Discard: {
      // Discard: tell the client it is done, keep nothing.
      if (proxy_) co_await proxy_->abandon();
      finish("discarded", {250, "2.0.0", "Ok: queued as " + ctx_.qid}, v.check);
      co_return;
    }
    case Action::Quarantine:
      state = "quarantine";
      disposition = "quarantined";
      if (proxy_) {
        // Kept here, not passed on: the message needs a spool file after all.
        co_await proxy_->abandon();
        if (!begin_quarantine()) co_return;
      }
      break;
    default:
      if (proxy_) {
        co_await relay_message();
        co_return;
      }
      break;
  }

  SpoolEnvelope env = spool_envelope();
  // fsync and rename block: do them on the worker pool while this session waits, so other
  // sessions keep being served. 250 only once the file and its directory entry are on disk.
  std::string why = co_await offload(svc_.blocking, [&] {
    auto done = svc_.spool.commit(*file_, env, state);
    return done ? std::string() : done.error().message;
  });
  if (!why.empty()) {
    // Also where a write error during the body surfaces: commit() reports the first one.
    finish("tempfail", spool_failure(why), "spool");
    co_return;
  }
  if (state == "active" && svc_.queued) svc_.queued(ctx_.qid);
  finish(disposition, {250, "2.0.0", "Ok: queued as " + ctx_.qid}, v.check);
}

// Proxy mode, after the end-of-data checks accepted the message: the backend gets it now,
// with the header fields Moat adds, and its reply is the client's.
asio::awaitable<void> Session::relay_message() {
  std::string head;
  for (const auto& [name, value] : ctx_.add_headers) head += name + ": " + value + "\r\n";
  head += received_header();
  // Forged header fields the checks marked (RFC 8601 §5) never reach the backend.
  std::string message = ctx_.remove_headers.empty()
                            ? std::move(ctx_.message)
                            : policy::remove_header_fields(ctx_.message, ctx_.remove_headers);
  Reply r = co_await proxy_->data(head, message, prefix());
  std::string_view disposition = r.code / 100 == 2   ? "relayed"
                                 : r.code / 100 == 4 ? "tempfail"
                                                     : "rejected";
  log_message(disposition, r, "backend");
  send(r);
  reset_transaction();
  state_ = kReady;
}

SpoolRecipient Session::spool_recipient(const policy::Recipient& r) const {
  SpoolRecipient sr;
  sr.address = r.address;
  sr.notify = r.notify;
  sr.orcpt = r.orcpt;
  return sr;
}

SpoolEnvelope Session::spool_envelope() const {
  SpoolEnvelope env;
  const auto& s = ctx_.session;
  env.qid = ctx_.qid;
  env.arrival = std::time(nullptr);
  env.client_ip = s.client_ip.to_string();
  env.helo = s.helo;
  env.protocol = protocol();
  if (s.tls) env.tls = s.tls_version + " " + s.tls_cipher;
  env.sender = ctx_.envelope.sender.address();
  env.body = ctx_.envelope.body;
  env.smtputf8 = ctx_.envelope.smtputf8;
  env.ret = ctx_.envelope.ret;
  env.envid = ctx_.envelope.envid;
  for (const auto& r : ctx_.envelope.recipients) env.recipients.push_back(spool_recipient(r));
  env.add_headers = ctx_.add_headers;
  env.remove_headers = ctx_.remove_headers;
  return env;
}

void Session::log_message(std::string_view disposition, const Reply& reply,
                          std::string_view check) {
  std::string rcpts;
  for (const auto& r : ctx_.envelope.recipients) {
    if (!rcpts.empty()) rcpts += ',';
    rcpts += "<" + r.address + ">";
  }
  std::string findings;
  for (const auto& f : ctx_.findings) {
    if (!findings.empty()) findings += ',';
    findings += fmt::format("{}:{:g}", f.name, svc_.pipeline.decider().score(f));
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - data_started_);
  spdlog::info(
      "{} event=message disposition={} client={} helo={} from={} nrcpt={} rcpt={} size={} "
      "proto={} tls={} check={} findings={} reply={} ms={}",
      prefix(), disposition, ctx_.session.client_ip.to_string(), kv(ctx_.session.helo),
      kv("<" + ctx_.envelope.sender.address() + ">"), ctx_.envelope.recipients.size(),
      kv(rcpts, 1024), filter_ ? filter_->size() : 0, protocol(),
      ctx_.session.tls ? kv(ctx_.session.tls_version) : "none", kv(check.empty() ? "-" : check),
      kv(findings.empty() ? "-" : findings), kv(fmt::format("{} {} {}", reply.code, reply.enhanced, reply.text)),
      ms.count());
}

void Session::reset_transaction() {
  ctx_.reset_transaction();
  file_.reset();  // an uncommitted file is removed by its destructor
  filter_.reset();
  chunk_.clear();
  bdat_ = false;
  if (state_ != kNoHelo) state_ = kReady;
}

asio::awaitable<void> Session::cmd_rset(std::string_view args) {
  if (!args.empty()) {
    send(501, "5.5.4", "Syntax: RSET");
    co_return;
  }
  reset_transaction();
  send(250, "2.0.0", "Ok");
}

asio::awaitable<void> Session::cmd_noop(std::string_view) {
  send(250, "2.0.0", "Ok");
  co_return;
}

asio::awaitable<void> Session::cmd_quit(std::string_view) {
  send(221, "2.0.0", "Bye");
  closing_ = true;
  co_return;
}

asio::awaitable<void> Session::cmd_vrfy(std::string_view args) {
  if (args.empty()) {
    send(501, "5.5.4", "Syntax: VRFY address");
    co_return;
  }
  // RFC 5321 §3.5.3: 252 answers without confirming or denying that the mailbox exists.
  send(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery");
}

asio::awaitable<void> Session::cmd_expn(std::string_view) {
  send(502, "5.5.1", "Error: EXPN is not supported");
  co_return;
}

asio::awaitable<void> Session::cmd_help(std::string_view) {
  send(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS");
  co_return;
}

}  // namespace

asio::awaitable<void> run_session(tcp::socket socket, Services& services,
                                  const policy::Listener& listener, std::string sid) {
  auto session = std::make_shared<Session>(std::move(socket), services, listener, sid);
  try {
    co_await session->run();
  } catch (const std::exception& e) {
    // A bug, not a client's mistake: log it with the session id; the connection is dropped.
    spdlog::error("sid={} qid=- event=session_exception error={}", sid, kv(e.what()));
  }
  session->close();
}

}  // namespace moat::gateway
