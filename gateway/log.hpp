// Logging: key=value lines. Session lines start with sid= (and qid= once a transaction has
// one), so `grep sid=...` or `grep qid=...` follows one client or one message. Client-supplied
// strings go through kv() so that nothing a client sends can forge a line or a field.
#pragma once

#include <spdlog/spdlog.h>

#include <string>
#include <string_view>

namespace moat::gateway {

// A value safe to put after "key=": left bare when it holds only harmless characters,
// otherwise double-quoted with \" \\ and \xNN escapes. Long values are cut at `max` octets.
std::string kv(std::string_view value, std::size_t max = 256);

// Sets the log format (UTC timestamp, level, message) on stderr.
void init_logging();

}  // namespace moat::gateway
