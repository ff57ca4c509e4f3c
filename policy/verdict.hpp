// Stages, findings and verdicts: the vocabulary shared by every check and both front ends.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moat::policy {

// The protocol's own words for the points where a decision can be taken.
enum class Stage { Connect, Helo, MailFrom, RcptTo, EndOfData };
constexpr std::string_view to_string(Stage s) {
  switch (s) {
    case Stage::Connect: return "connect";
    case Stage::Helo: return "helo";
    case Stage::MailFrom: return "mail";
    case Stage::RcptTo: return "rcpt";
    case Stage::EndOfData: return "data";
  }
  return "?";
}

// A named observation with a score. Names are stable, lowercase and dotted ("spf.fail",
// "rule.phish_url") because logs, config and metrics all key on them.
struct Finding {
  std::string name;
  double score = 0;
  std::string detail;
};

// A wire-independent reply: each front end renders it in its own protocol.
struct Reply {
  int code = 0;              // 250, 451, 550 ...
  std::string enhanced;      // "2.0.0", "5.7.1" (RFC 3463)
  std::string text;
};

enum class Action {
  Continue,    // no opinion: the next check decides
  Accept,      // permit: ends this stage's checks with acceptance (not the message's later stages)
  Reject,      // 5xx
  TempFail,    // 4xx
  Discard,     // accept on the wire, drop silently
  Quarantine,  // accept on the wire, keep in quarantine
};
constexpr std::string_view to_string(Action a) {
  switch (a) {
    case Action::Continue: return "continue";
    case Action::Accept: return "accept";
    case Action::Reject: return "reject";
    case Action::TempFail: return "tempfail";
    case Action::Discard: return "discard";
    case Action::Quarantine: return "quarantine";
  }
  return "?";
}

struct Verdict {
  Action action = Action::Continue;
  Reply reply;        // meaningful for Reject and TempFail
  std::string check;  // which check decided (set by the Pipeline)

  bool final() const { return action != Action::Continue; }

  static Verdict next() { return {}; }
  static Verdict accept() { return {Action::Accept, {}, {}}; }
  static Verdict reject(int code, std::string enhanced, std::string text) {
    return {Action::Reject, {code, std::move(enhanced), std::move(text)}, {}};
  }
  static Verdict tempfail(int code, std::string enhanced, std::string text) {
    return {Action::TempFail, {code, std::move(enhanced), std::move(text)}, {}};
  }
};

}  // namespace moat::policy
