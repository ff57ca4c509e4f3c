// moat-clamav: a scanner plugin that asks clamd (Debian clamav-daemon) about each message over
// its UNIX socket with INSTREAM (clamd(8)): "zINSTREAM\0", chunks of <4-byte big-endian length>
// <data>, a zero length, then one reply "stream: OK" | "stream: <signature> FOUND" |
// "... ERROR". A found signature → reject (554 5.7.1 "Virus found: <signature>") and a finding
// av.<signature>; clamd unreachable or an ERROR → an error reply (Moat applies on_error).
//
// usage: moat-clamav --endpoint ipc:///run/moat/clamav.sock --clamd /run/clamav/clamd.ctl
//                    [--timeout 30]
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "plugins/sdk/plugin.hpp"

namespace {

using moat::Result;
using moat::plugin::Reply;
using moat::plugin::Request;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

bool write_all(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// clamd's verdict line for `data`, or an error.
Result<std::string> instream(const std::string& socket_path, const std::string& data,
                             int timeout_s) {
  Fd fd(socket(AF_UNIX, SOCK_STREAM, 0));
  if (fd.get() < 0) return Result<std::string>::fail(std::strerror(errno));
  timeval tv{timeout_s, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path)
    return Result<std::string>::fail("clamd socket path too long");
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return Result<std::string>::fail("clamd " + socket_path + ": " + std::strerror(errno));
  if (!write_all(fd.get(), "zINSTREAM", 10))
    return Result<std::string>::fail("clamd: write failed");
  constexpr std::size_t kChunk = 64 * 1024;  // below clamd's StreamMaxLength chunking limits
  for (std::size_t off = 0; off < data.size(); off += kChunk) {
    std::size_t n = std::min(kChunk, data.size() - off);
    std::uint32_t len = htonl(static_cast<std::uint32_t>(n));
    if (!write_all(fd.get(), &len, 4) || !write_all(fd.get(), data.data() + off, n))
      return Result<std::string>::fail("clamd: write failed (size limit?)");
  }
  std::uint32_t zero = 0;
  if (!write_all(fd.get(), &zero, 4)) return Result<std::string>::fail("clamd: write failed");
  std::string reply;
  char buf[512];
  while (reply.size() < 4096) {
    ssize_t r = recv(fd.get(), buf, sizeof buf, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    reply.append(buf, static_cast<std::size_t>(r));
    if (reply.find('\0') != std::string::npos) break;
  }
  auto nul = reply.find('\0');
  if (nul != std::string::npos) reply.resize(nul);
  if (reply.empty()) return Result<std::string>::fail("clamd: no answer");
  return reply;
}

}  // namespace

int main(int argc, char** argv) {
  using moat::plugin::option;
  std::string endpoint = option(argc, argv, "--endpoint", "");
  std::string clamd = option(argc, argv, "--clamd", "/run/clamav/clamd.ctl");
  int timeout = std::atoi(option(argc, argv, "--timeout", "30").c_str());
  if (endpoint.empty() || timeout <= 0) {
    std::fprintf(stderr, "usage: moat-clamav --endpoint ENDPOINT [--clamd SOCKET] [--timeout S]\n");
    return 2;
  }
  auto handler = [&](const Request& req) -> Result<Reply> {
    Reply out;
    if (req.stage != "data") return out;
    auto verdict = instream(clamd, req.message, timeout);
    if (!verdict) return Result<Reply>::fail(verdict.error().message);
    const std::string& v = *verdict;  // "stream: OK", "stream: NAME FOUND", "... ERROR"
    constexpr std::string_view kFound = " FOUND";
    if (v.size() > kFound.size() && v.compare(v.size() - kFound.size(), kFound.size(), kFound) == 0) {
      auto colon = v.find(": ");
      std::string sig = v.substr(colon == std::string::npos ? 0 : colon + 2);
      sig.resize(sig.size() - kFound.size());
      out.action = moat::plugin::PluginAction::Reject;
      out.reply = "Virus found: " + sig;
      out.findings.push_back({"av." + moat::scanners::normalize_finding_name(sig), 20, sig});
      return out;
    }
    if (v.size() >= 3 && v.compare(v.size() - 3, 3, " OK") == 0) {
      out.headers.push_back({"X-Virus-Scanned", "moat-clamav"});
      return out;
    }
    return Result<Reply>::fail("clamd: " + moat::scanners::sanitize_reply_text(v));
  };
  return moat::plugin::serve(endpoint, {"clamav", "1.0", {"av", "instream"}, {"data"}}, handler);
}
