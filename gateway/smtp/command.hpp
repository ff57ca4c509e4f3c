// SMTP command parsing: the verb table and the MAIL/RCPT argument grammar (RFC 5321 §4.1,
// with the parameters of SIZE RFC 1870, 8BITMIME RFC 6152, SMTPUTF8 RFC 6531 and DSN RFC 3461).
// Parsing is pure: it fills the envelope or returns the exact reply for the client's mistake.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "policy/message_context.hpp"
#include "policy/verdict.hpp"

namespace moat::gateway {

enum class Verb { Ehlo, Helo, Mail, Rcpt, Data, Bdat, Rset, Noop, Quit, Vrfy, Expn, Help,
                  StartTls, Unknown };

struct Command {
  Verb verb = Verb::Unknown;
  std::string_view args;  // after the verb and one space; may be empty
};

// Splits a command line (CRLF already removed) into verb and arguments; verbs are
// case-insensitive. A verb followed by something other than a space is Unknown.
Command parse_command(std::string_view line);

// "MAIL FROM:<path> [params]". On success fills `env` and returns nullopt; otherwise the reply.
std::optional<policy::Reply> parse_mail(std::string_view args, std::uint64_t max_size,
                                        policy::Envelope& env);
// "RCPT TO:<path> [params]". `smtputf8`: the transaction declared SMTPUTF8.
std::optional<policy::Reply> parse_rcpt(std::string_view args, bool smtputf8,
                                        policy::Recipient& rcpt);

// "BDAT <size> [LAST]"; nullopt when malformed.
struct BdatArgs {
  std::uint64_t size = 0;
  bool last = false;
};
std::optional<BdatArgs> parse_bdat(std::string_view args);

// RFC 3461 §4 xtext.
bool valid_xtext(std::string_view s);

}  // namespace moat::gateway
