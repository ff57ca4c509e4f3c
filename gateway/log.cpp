#include "gateway/log.hpp"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace moat::gateway {

std::string kv(std::string_view v, std::size_t max) {
  bool truncated = v.size() > max;
  if (truncated) v = v.substr(0, max);
  bool bare = !v.empty();
  for (unsigned char c : v) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 std::string_view("._-@:/+<>[],;*#").find(static_cast<char>(c)) !=
                     std::string_view::npos;
    if (!plain) bare = false;
  }
  if (bare && !truncated) return std::string(v);
  std::string out = "\"";
  for (unsigned char c : v) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c >= 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (truncated) out += "...";
  out.push_back('"');
  return out;
}

void init_logging() {
  auto logger = spdlog::stderr_logger_mt("moat");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace moat::gateway
