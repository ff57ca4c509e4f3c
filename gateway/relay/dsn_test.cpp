// Tests for gateway/relay: DSN construction (RFC 3464), dot-stuffing (RFC 5321 §4.5.2) and the
// retry schedule.
#include "gateway/relay/dsn.hpp"

#include <doctest/doctest.h>

#include <string>

#include "gateway/relay/queue_manager.hpp"
#include "gateway/relay/smtp_client.hpp"

namespace moat::gateway {
namespace {

using State = SpoolRecipient::State;

SpoolEnvelope envelope() {
  SpoolEnvelope e;
  e.qid = "1K19JZMAJVVXC5";
  e.arrival = 1764295200;
  e.sender = "alice@example.org";
  e.envid = "ENV+2B1";
  SpoolRecipient a;
  a.address = "bob@example.test";
  a.state = State::Failed;
  a.diagnostic = "550 5.1.1 <bob@example.test>: Recipient address rejected";
  a.orcpt = "rfc822;Bob+40example.test";
  SpoolRecipient b;
  b.address = "carol@example.test";
  b.state = State::Delivered;
  b.diagnostic = "250 2.0.0 Ok";
  SpoolRecipient c;
  c.address = "dave@example.test";
  c.state = State::Failed;
  c.diagnostic = "554 transaction failed";  // no enhanced code
  e.recipients = {a, b, c};
  return e;
}

const std::string kOriginal =
    "Received: from x\r\nSubject: hello\r\nFrom: alice@example.org\r\n\r\nsecret body\r\n";

TEST_CASE("dsn: multipart/report with one status block per failed recipient") {
  auto env = envelope();
  std::string dsn = make_failure_dsn(env, kOriginal, {0, 2}, "mx.example.test", "DSNQID");
  CAPTURE(dsn);
  auto has = [&](std::string_view s) { return dsn.find(s) != std::string::npos; };
  CHECK(has("To: <alice@example.org>\r\n"));
  CHECK(has("Auto-Submitted: auto-replied\r\n"));
  CHECK(has("Content-Type: multipart/report; report-type=delivery-status;"));
  CHECK(has("Reporting-MTA: dns; mx.example.test\r\n"));
  CHECK(has("Original-Envelope-Id: ENV+1\r\n"));  // xtext "+2B" is "+"
  CHECK(has("Final-Recipient: rfc822; bob@example.test\r\n"));
  CHECK(has("Original-Recipient: rfc822; Bob@example.test\r\n"));
  CHECK(has("Action: failed\r\nStatus: 5.1.1\r\n"));
  CHECK(has("Diagnostic-Code: smtp; 550 5.1.1 <bob@example.test>: Recipient address rejected"));
  CHECK(has("Final-Recipient: rfc822; dave@example.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"));
  CHECK_FALSE(has("carol@example.test"));  // delivered: not in the report
  // RET not given: the whole message comes back.
  CHECK(has("Content-Type: message/rfc822\r\n\r\n" + kOriginal));
  // Every line ends in CRLF: no bare LF.
  for (std::size_t i = dsn.find('\n'); i != std::string::npos; i = dsn.find('\n', i + 1))
    CHECK(dsn[i - 1] == '\r');
  auto boundary_at = dsn.find("boundary=\"");
  REQUIRE(boundary_at != std::string::npos);
  std::string boundary = dsn.substr(boundary_at + 10, dsn.find('"', boundary_at + 10) - boundary_at - 10);
  CHECK(kOriginal.find(boundary) == std::string::npos);
  CHECK(dsn.size() >= boundary.size() + 8);
  CHECK(dsn.substr(dsn.size() - boundary.size() - 6) == "--" + boundary + "--\r\n");
}

TEST_CASE("dsn: RET=HDRS returns only the header") {
  auto env = envelope();
  env.ret = "HDRS";
  std::string dsn = make_failure_dsn(env, kOriginal, {0}, "mx.example.test", "DSNQID");
  CHECK(dsn.find("Content-Type: text/rfc822-headers") != std::string::npos);
  CHECK(dsn.find("Subject: hello\r\n") != std::string::npos);
  CHECK(dsn.find("secret body") == std::string::npos);
}

TEST_CASE("dsn: who gets one (RFC 3461 NOTIFY, never the null sender)") {
  auto env = envelope();
  SpoolRecipient r;
  struct Row {
    const char* sender;
    const char* notify;
    bool wanted;
  };
  for (Row row : {Row{"alice@example.org", "", true}, Row{"alice@example.org", "FAILURE", true},
                  Row{"alice@example.org", "SUCCESS,FAILURE", true},
                  Row{"alice@example.org", "DELAY", false}, Row{"alice@example.org", "NEVER", false},
                  Row{"", "", false}, Row{"", "FAILURE", false}}) {
    CAPTURE(row.sender);
    CAPTURE(row.notify);
    env.sender = row.sender;
    r.notify = row.notify;
    CHECK(wants_failure_dsn(env, r) == row.wanted);
  }
}

TEST_CASE("smtp client: dot-stuffing and the end-of-data marker") {
  struct Row {
    std::string in, out;
  };
  for (const Row& row : {Row{"a\r\n", "a\r\n.\r\n"}, Row{".a\r\n", "..a\r\n.\r\n"},
                         Row{"a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
                         Row{"a\r\n..\r\n", "a\r\n...\r\n.\r\n"},
                         Row{"no final crlf", "no final crlf\r\n.\r\n"}, Row{"", "\r\n.\r\n"},
                         Row{"x\r\n.", "x\r\n..\r\n.\r\n"}}) {
    CAPTURE(row.in);
    CHECK(SmtpClient::dot_stuff(row.in) == row.out);
  }
}

TEST_CASE("queue: backoff doubles from retry_min up to retry_max") {
  policy::DeliveryConfig d;
  d.retry_min = std::chrono::seconds(60);
  d.retry_max = std::chrono::seconds(600);
  CHECK(QueueManager::backoff(d, 1).count() == 60);
  CHECK(QueueManager::backoff(d, 2).count() == 120);
  CHECK(QueueManager::backoff(d, 3).count() == 240);
  CHECK(QueueManager::backoff(d, 4).count() == 480);
  CHECK(QueueManager::backoff(d, 5).count() == 600);
  CHECK(QueueManager::backoff(d, 50).count() == 600);
}

}  // namespace
}  // namespace moat::gateway
