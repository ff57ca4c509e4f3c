#include "gateway/relay/dsn.hpp"

#include "gateway/rfc5322_date.hpp"

#include <fmt/format.h>

#include <charconv>
#include <ctime>

namespace moat::gateway {
namespace {

// "550 5.1.1 text" -> "5.1.1"; a reply without an enhanced code gets the generic class code.
std::string status_of(std::string_view diagnostic) {
  if (diagnostic.size() >= 9 && diagnostic[3] == ' ' && diagnostic[5] == '.') {
    auto end = diagnostic.find(' ', 4);
    std::string_view code = diagnostic.substr(4, end == std::string_view::npos ? end : end - 4);
    if (code.size() >= 5 && code.size() <= 11 && (code[0] == '4' || code[0] == '5') &&
        code.find_first_not_of("0123456789.") == std::string_view::npos)
      return std::string(code);
  }
  return !diagnostic.empty() && diagnostic[0] == '4' ? "4.0.0" : "5.0.0";
}

// xtext (RFC 3461 §4) back to text, for Original-Recipient / Original-Envelope-Id.
std::string xtext_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    unsigned v = 0;
    if (s[i] == '+' && i + 2 < s.size() &&
        std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16).ptr == s.data() + i + 3) {
      out.push_back(static_cast<char>(v));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Keeps header-field values on one line and ASCII.
std::string clean(std::string_view s) {
  std::string out;
  for (unsigned char c : s) out.push_back(c < 0x20 || c >= 0x7f ? '?' : static_cast<char>(c));
  return out;
}

}  // namespace

bool wants_failure_dsn(const SpoolEnvelope& env, const SpoolRecipient& rcpt) {
  if (env.sender.empty()) return false;
  if (rcpt.notify.empty()) return true;
  return rcpt.notify.find("FAILURE") != std::string::npos;
}

std::string make_failure_dsn(const SpoolEnvelope& env, std::string_view original,
                             const std::vector<std::size_t>& failed,
                             std::string_view reporting_mta, std::string_view dsn_qid) {
  std::string boundary = fmt::format("{}/{}", dsn_qid, reporting_mta);
  std::time_t now = std::time(nullptr);
  std::string out;
  out += fmt::format("From: Mail Delivery System <MAILER-DAEMON@{}>\r\n", reporting_mta);
  out += fmt::format("To: <{}>\r\n", clean(env.sender));
  out += "Subject: Undelivered Mail Returned to Sender\r\n";
  out += fmt::format("Date: {}\r\n", rfc5322_date(now));
  out += fmt::format("Message-ID: <{}.dsn@{}>\r\n", dsn_qid, reporting_mta);
  out += "Auto-Submitted: auto-replied\r\n";  // RFC 3834
  out += "MIME-Version: 1.0\r\n";
  out += fmt::format(
      "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{}\"\r\n\r\n",
      boundary);
  out += "This is a MIME-encapsulated message.\r\n\r\n";

  out += fmt::format("--{}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", boundary);
  out += fmt::format("This is the mail system at host {}.\r\n\r\n", reporting_mta);
  out += "Your message could not be delivered to one or more recipients.\r\n\r\n";
  for (std::size_t i : failed) {
    const auto& r = env.recipients[i];
    out += fmt::format("<{}>: {}\r\n", clean(r.address), clean(r.diagnostic));
  }
  out += "\r\n";

  out += fmt::format("--{}\r\nContent-Type: message/delivery-status\r\n\r\n", boundary);
  out += fmt::format("Reporting-MTA: dns; {}\r\n", reporting_mta);
  if (!env.envid.empty()) out += fmt::format("Original-Envelope-Id: {}\r\n", clean(xtext_decode(env.envid)));
  out += fmt::format("X-Moat-Queue-ID: {}\r\n", env.qid);
  out += fmt::format("Arrival-Date: {}\r\n", rfc5322_date(static_cast<std::time_t>(env.arrival)));
  for (std::size_t i : failed) {
    const auto& r = env.recipients[i];
    out += "\r\n";
    out += fmt::format("Final-Recipient: rfc822; {}\r\n", clean(r.address));
    if (!r.orcpt.empty()) {
      auto semi = r.orcpt.find(';');
      out += fmt::format("Original-Recipient: {}; {}\r\n", clean(r.orcpt.substr(0, semi)),
                         clean(xtext_decode(r.orcpt.substr(semi + 1))));
    }
    out += "Action: failed\r\n";
    out += fmt::format("Status: {}\r\n", status_of(r.diagnostic));
    out += fmt::format("Diagnostic-Code: smtp; {}\r\n", clean(r.diagnostic));
  }
  out += "\r\n";

  bool headers_only = env.ret == "HDRS";
  std::string_view part = original;
  if (headers_only) {
    auto end = original.find("\r\n\r\n");
    part = end == std::string_view::npos ? original : original.substr(0, end + 2);
  }
  out += fmt::format("--{}\r\nContent-Type: {}\r\n\r\n", boundary,
                     headers_only ? "text/rfc822-headers" : "message/rfc822");
  out += part;
  if (part.size() < 2 || part.substr(part.size() - 2) != "\r\n") out += "\r\n";
  out += fmt::format("\r\n--{}--\r\n", boundary);
  return out;
}

}  // namespace moat::gateway
