#include "plugins/sdk/plugin.hpp"

#include <csignal>
#include <cstdio>
#include <zmq.hpp>
#include <zmq_addon.hpp>

namespace moat::plugin {
namespace {
volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_signal(int) { g_stop = 1; }
}  // namespace

std::vector<std::string> answer(const std::vector<std::string>& frames, const Info& info,
                                const Handler& handler) {
  auto d = scanners::decode(frames);
  if (!d) return scanners::encode_error("", d.error().message);
  if (d->type == "hello") {
    scanners::Hello h{d->id, info.name, info.version, info.capabilities, info.stages};
    return scanners::encode_hello(h);
  }
  std::string id = d->id;
  auto req = scanners::parse_request(std::move(*d));
  if (!req) return scanners::encode_error(id, req.error().message);
  Result<Reply> r = Reply{};
  try {
    r = handler(*req);
  } catch (const std::exception& e) {
    r = Result<Reply>::fail(std::string("handler failed: ") + e.what());
  }
  if (!r) return scanners::encode_error(id, r.error().message);
  r->id = id;
  return scanners::encode_result(*r);
}

int serve(const std::string& endpoint, const Info& info, const Handler& handler) {
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  zmq::context_t ctx;
  zmq::socket_t sock(ctx, zmq::socket_type::rep);
  sock.set(zmq::sockopt::linger, 0);
  sock.set(zmq::sockopt::rcvtimeo, 200);  // to notice a signal
  sock.set(zmq::sockopt::maxmsgsize, std::int64_t{256} << 20);
  try {
    sock.connect(endpoint);
  } catch (const zmq::error_t& e) {
    std::fprintf(stderr, "%s: cannot connect %s: %s\n", info.name.c_str(), endpoint.c_str(),
                 e.what());
    return 1;
  }
  std::fprintf(stderr, "%s: serving %s\n", info.name.c_str(), endpoint.c_str());
  while (!g_stop) {
    std::vector<zmq::message_t> parts;
    try {
      auto n = zmq::recv_multipart(sock, std::back_inserter(parts));
      if (!n) continue;  // timeout
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      std::fprintf(stderr, "%s: receive failed: %s\n", info.name.c_str(), e.what());
      return 1;
    }
    std::vector<std::string> frames;
    for (auto& p : parts) frames.push_back(p.to_string());
    auto reply = answer(frames, info, handler);
    std::vector<zmq::message_t> out;
    for (auto& f : reply) out.emplace_back(f.data(), f.size());
    try {
      (void)zmq::send_multipart(sock, out);
    } catch (const zmq::error_t& e) {
      std::fprintf(stderr, "%s: send failed: %s\n", info.name.c_str(), e.what());
    }
  }
  return 0;
}

std::string option(int argc, char** argv, const std::string& key, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (key == argv[i]) return argv[i + 1];
  return fallback;
}

}  // namespace moat::plugin
