// RFC 5322 §3.3 date-time in UTC ("Sat, 28 Nov 2026 02:14:20 +0000"), for the headers Moat
// writes (Received, DSN Date and Arrival-Date).
#pragma once

#include <ctime>
#include <string>

namespace moat::gateway {

inline std::string rfc5322_date(std::time_t t = std::time(nullptr)) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

}  // namespace moat::gateway
