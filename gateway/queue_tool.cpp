#include "gateway/queue_tool.hpp"

#include <fmt/format.h>

#include <ctime>

#include "gateway/spool/spool.hpp"

namespace moat::gateway {
namespace {

constexpr const char* kUsage = R"(usage: moat queue [--config FILE] COMMAND
  list [--json]       every queued message: state, sender, recipients, size, age, attempts,
                      next try, last error
  show QID            envelope and message of one queued message
  flush [QID]         deliver now: deferred messages (or QID) move to active/
  hold QID            keep a message out of delivery (moves to hold/)
  release QID         put a held message back into delivery
  delete QID          remove a queued message for good
)";

constexpr std::string_view kQueueStates[] = {"active", "deferred", "hold"};

std::string json_escape(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

const char* state_name(SpoolRecipient::State s) {
  switch (s) {
    case SpoolRecipient::State::Pending: return "pending";
    case SpoolRecipient::State::Delivered: return "delivered";
    case SpoolRecipient::State::Failed: return "failed";
  }
  return "?";
}

// Finds the state a qid is in; "" when it is in none of `states`.
std::string find_state(const Spool& spool, const std::string& qid,
                       std::initializer_list<std::string_view> states) {
  for (auto s : states)
    for (const auto& q : spool.list(s))
      if (q == qid) return std::string(s);
  return "";
}

int list(const Spool& spool, bool json) {
  std::time_t now = std::time(nullptr);
  bool first = true;
  if (json) fmt::print("[");
  std::size_t count = 0;
  for (auto state : kQueueStates) {
    for (const auto& qid : spool.list(state)) {
      auto m = spool.read(state, qid);
      if (!m) {
        fmt::print(stderr, "{}: {}\n", qid, m.error().message);
        continue;
      }
      const auto& e = m->envelope;
      ++count;
      if (json) {
        std::string rcpts;
        for (const auto& r : e.recipients)
          rcpts += fmt::format("{}{{\"address\":\"{}\",\"state\":\"{}\",\"diagnostic\":\"{}\"}}",
                               rcpts.empty() ? "" : ",", json_escape(r.address),
                               state_name(r.state), json_escape(r.diagnostic));
        fmt::print("{}\n{{\"qid\":\"{}\",\"state\":\"{}\",\"sender\":\"{}\",\"size\":{},"
                   "\"arrival\":{},\"age\":{},\"attempts\":{},\"next_attempt\":{},"
                   "\"last_error\":\"{}\",\"recipients\":[{}]}}",
                   first ? "" : ",", qid, state, json_escape(e.sender), m->message.size(),
                   e.arrival, now - e.arrival, e.attempts, e.next_attempt,
                   json_escape(e.last_error), rcpts);
        first = false;
        continue;
      }
      std::string next = e.next_attempt > now ? fmt::format("in {}s", e.next_attempt - now) : "now";
      fmt::print("{} {:<8} {:>9} age={}s attempts={} next={} from=<{}>\n", qid, state,
                 m->message.size(), now - e.arrival, e.attempts, state == "hold" ? "held" : next,
                 e.sender);
      for (const auto& r : e.recipients)
        fmt::print("    <{}> {}{}\n", r.address, state_name(r.state),
                   r.diagnostic.empty() ? "" : ": " + r.diagnostic);
    }
  }
  if (json) fmt::print("\n]\n");
  else fmt::print("-- {} message{}\n", count, count == 1 ? "" : "s");
  return 0;
}

int move(Spool& spool, const std::string& qid, std::initializer_list<std::string_view> from,
         std::string_view to, std::string_view verb) {
  std::string state = find_state(spool, qid, from);
  if (state.empty()) {
    std::string where;
    for (auto s : from) where += (where.empty() ? "" : " or ") + std::string(s) + "/";
    fmt::print(stderr, "moat queue {}: {} is not in {}\n", verb, qid, where);
    return 1;
  }
  auto done = spool.move(state, qid, to);
  if (!done) {
    fmt::print(stderr, "moat queue {}: {}\n", verb, done.error().message);
    return 1;
  }
  fmt::print("{}: {} -> {}\n", qid, state, to);
  return 0;
}

}  // namespace

int queue_command(const policy::Config& config, const std::vector<std::string>& args) {
  if (args.empty()) {
    fmt::print(stderr, "{}", kUsage);
    return 2;
  }
  auto opened = Spool::open(config.server.spool_dir);
  if (!opened) {
    fmt::print(stderr, "moat queue: {}\n", opened.error().message);
    return 1;
  }
  Spool& spool = **opened;
  const std::string& cmd = args[0];
  if (cmd == "list" && args.size() <= 2) return list(spool, args.size() == 2 && args[1] == "--json");
  if (cmd == "show" && args.size() == 2) {
    std::string state = find_state(spool, args[1], {"active", "deferred", "hold", "quarantine", "corrupt"});
    auto m = state.empty() ? Result<SpooledMessage>::fail(args[1] + ": no such message")
                           : spool.read(state, args[1]);
    if (!m) {
      fmt::print(stderr, "moat queue show: {}\n", m.error().message);
      return 1;
    }
    fmt::print("state {}\n{}\n{}", state, serialize(m->envelope), m->message);
    return 0;
  }
  if (cmd == "flush" && args.size() <= 2) {
    if (args.size() == 2) return move(spool, args[1], {"deferred"}, "active", "flush");
    int rc = 0;
    for (const auto& qid : spool.list("deferred")) rc |= move(spool, qid, {"deferred"}, "active", "flush");
    return rc;
  }
  if (cmd == "hold" && args.size() == 2) return move(spool, args[1], {"active", "deferred"}, "hold", "hold");
  if (cmd == "release" && args.size() == 2) return move(spool, args[1], {"hold"}, "active", "release");
  if (cmd == "delete" && args.size() == 2) {
    std::string state = find_state(spool, args[1], {"active", "deferred", "hold"});
    if (state.empty()) {
      fmt::print(stderr, "moat queue delete: {} is not queued\n", args[1]);
      return 1;
    }
    auto done = spool.remove(state, args[1]);
    if (!done) {
      fmt::print(stderr, "moat queue delete: {}\n", done.error().message);
      return 1;
    }
    fmt::print("{}: deleted from {}\n", args[1], state);
    return 0;
  }
  fmt::print(stderr, "{}", kUsage);
  return 2;
}

}  // namespace moat::gateway
