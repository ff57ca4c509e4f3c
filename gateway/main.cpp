// moat: one binary, several subcommands. This file is the composition root: it loads the
// configuration, builds the shared services (spool, TLS, pipeline) and hands them to the
// front end by reference.
#include <fmt/format.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/thread_pool.hpp>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "gateway/log.hpp"
#include "gateway/queue_tool.hpp"
#include "gateway/relay/callout_check.hpp"
#include "gateway/relay/queue_manager.hpp"
#include "gateway/server.hpp"
#include "gateway/spool/spool.hpp"
#include "gateway/tls/tls_context.hpp"
#include "policy/config.hpp"
#include "policy/pipeline.hpp"
#include "policy/recipient_check.hpp"
#include "scanners/external/scanner_check.hpp"

namespace {

using namespace moat;

constexpr const char* kUsage = R"(usage:
  moat serve [--config FILE]     run the SMTP gateway (embedded default config without --config)
  moat config check FILE         validate a configuration; prints file:line: reason, exit 1 on error
  moat config default            print the embedded default configuration
  moat queue [--config FILE] list [--json] | show QID | flush [QID] | hold QID | release QID | delete QID
  moat version
)";

Result<policy::Config> load(const std::vector<std::string>& args) {
  for (std::size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == "--config") return policy::load_config_file(args[i + 1]);
  return policy::load_config_text(policy::default_config_text(), "<embedded default>");
}

// After binding: become server.user, giving it the spool first. Returns an error text or "".
std::string drop_privileges(const policy::Config& config) {
  if (geteuid() != 0) return "";
  if (config.server.user.empty()) {
    spdlog::warn("event=running_as_root hint=\"set server.user to drop privileges\"");
    return "";
  }
  struct passwd* pw = getpwnam(config.server.user.c_str());
  if (!pw) return fmt::format("server.user '{}' does not exist", config.server.user);
  std::error_code ec;
  std::filesystem::path spool = config.server.spool_dir;
  if (chown(spool.c_str(), pw->pw_uid, pw->pw_gid) != 0)
    return fmt::format("chown {}: {}", spool.string(), std::strerror(errno));
  for (auto& entry : std::filesystem::recursive_directory_iterator(spool, ec))
    if (lchown(entry.path().c_str(), pw->pw_uid, pw->pw_gid) != 0)
      return fmt::format("chown {}: {}", entry.path().string(), std::strerror(errno));
  if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
      setuid(pw->pw_uid) != 0)
    return fmt::format("cannot become '{}': {}", config.server.user, std::strerror(errno));
  if (setuid(0) == 0) return "privileges could not be dropped";
  spdlog::info("event=privileges_dropped user={} uid={}", config.server.user, pw->pw_uid);
  return "";
}

int serve(const std::vector<std::string>& args) {
  gateway::init_logging();
  auto config = load(args);
  if (!config) {
    fmt::print(stderr, "{}\n", config.error().message);
    return 1;
  }
  const policy::Config& cfg = *config;
  signal(SIGPIPE, SIG_IGN);

  auto tls = gateway::make_tls_context(cfg.tls, cfg.server.hostname);
  if (!tls) {
    spdlog::critical("event=startup_failed error={}", gateway::kv(tls.error().message));
    return 1;
  }
  auto spool = gateway::Spool::open(cfg.server.spool_dir);
  if (!spool) {
    spdlog::critical("event=startup_failed error={}", gateway::kv(spool.error().message));
    return 1;
  }
  std::vector<std::unique_ptr<policy::Check>> checks;
  if (!cfg.relay.recipients_file.empty())
    checks.push_back(std::make_unique<policy::RecipientCheck>(cfg.relay.recipients_file,
                                                              policy::RelayCheck(cfg.relay)));
  asio::io_context io(1);
  if (cfg.relay.callout)
    checks.push_back(std::make_unique<gateway::CalloutCheck>(io.get_executor(), cfg));
  // External scanner plugins ([[scanner]]): one check runs them all in parallel.
  if (!cfg.scanners.empty()) {
    auto scanners = std::make_unique<scanners::ScannerCheck>(io.get_executor(), cfg.scanners);
    if (auto started = scanners->start(); !started) {
      spdlog::critical("event=startup_failed error={}", gateway::kv(started.error().message));
      return 1;
    }
    checks.push_back(std::move(scanners));
  }
  policy::Pipeline pipeline(policy::RelayCheck(cfg.relay), std::move(checks),
                            policy::Decider(cfg.decider));
  asio::thread_pool blocking(2);
  gateway::QueueManager queue(io, cfg, **spool, blocking);
  gateway::Services services{cfg, pipeline, **spool, **tls, blocking,
                             [&queue](const std::string& qid) { queue.enqueue(qid); }};
  std::unique_ptr<asio::ssl::context> proxy_tls;
  bool proxying = std::any_of(cfg.server.listen.begin(), cfg.server.listen.end(), [](auto& l) {
    return l.mode == policy::ListenerMode::Proxy;
  });
  if (const auto* route = cfg.proxy_route(); route && proxying) {
    proxy_tls = gateway::SmtpClient::make_tls_context(*route);
    services.proxy_tls = proxy_tls.get();
  }
  gateway::Server server(io, services);
  if (auto bound = server.bind(); !bound) {
    spdlog::critical("event=startup_failed error={}", gateway::kv(bound.error().message));
    return 1;
  }
  if (auto err = drop_privileges(cfg); !err.empty()) {
    spdlog::critical("event=startup_failed error={}", gateway::kv(err));
    return 1;
  }
  auto recovered = (*spool)->recover();
  spdlog::info("event=spool_recovered dir={} queued={} incomplete_removed={} corrupt={}",
               gateway::kv(cfg.server.spool_dir), recovered.queued, recovered.incomplete,
               recovered.corrupt);

  // SIGTERM/SIGINT: stop accepting, give sessions under way up to 10 s, then stop. A message
  // that has not had its 250 is not lost: the client still holds it and will retry.
  asio::signal_set signals(io, SIGINT, SIGTERM);
  asio::steady_timer drain(io);
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::function<void(std::error_code)> wait_drained = [&](std::error_code) {
    if ((server.sessions() == 0 && queue.in_flight() == 0) ||
        std::chrono::steady_clock::now() >= give_up) {
      io.stop();
      return;
    }
    drain.expires_after(std::chrono::milliseconds(50));
    drain.async_wait(wait_drained);
  };
  signals.async_wait([&](std::error_code ec, int sig) {
    if (ec) return;
    spdlog::info("event=stopping signal={} sessions={}", sig, server.sessions());
    server.stop();
    queue.stop();
    give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    wait_drained({});
  });
  server.start();
  queue.start();
  std::string listen;
  for (const auto& l : cfg.server.listen)
    listen += (listen.empty() ? "" : ",") + l.address.to_string() +
              (l.mode == policy::ListenerMode::Proxy ? "(proxy)" : "");
  spdlog::info("event=ready version={} config={} listen={} hostname={} relay_domains={}",
               MOAT_VERSION, gateway::kv(cfg.source), listen, cfg.server.hostname,
               cfg.relay.domains.size());
  io.run();
  blocking.join();
  spdlog::info("event=stopped");
  return 0;
}

int config_command(const std::vector<std::string>& args) {
  if (args.size() == 1 && args[0] == "default") {
    fmt::print("{}", policy::default_config_text());
    return 0;
  }
  if (args.size() == 2 && args[0] == "check") {
    auto config = policy::load_config_file(args[1]);
    if (!config) {
      fmt::print(stderr, "{}\n", config.error().message);
      return 1;
    }
    fmt::print("{}: ok\n", args[1]);
    return 0;
  }
  fmt::print(stderr, "{}", kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    fmt::print(stderr, "{}", kUsage);
    return 2;
  }
  std::string cmd = args[0];
  args.erase(args.begin());
  if (cmd == "serve") return serve(args);
  if (cmd == "config") return config_command(args);
  if (cmd == "queue") {
    auto config = load(args);
    if (!config) {
      fmt::print(stderr, "{}\n", config.error().message);
      return 1;
    }
    for (std::size_t i = 0; i + 1 < args.size(); ++i)
      if (args[i] == "--config") {
        args.erase(args.begin() + static_cast<long>(i), args.begin() + static_cast<long>(i) + 2);
        break;
      }
    return gateway::queue_command(*config, args);
  }
  if (cmd == "version" || cmd == "--version") {
    fmt::print("moat {}\n", MOAT_VERSION);
    return 0;
  }
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    fmt::print("{}", kUsage);
    return 0;
  }
  fmt::print(stderr, "moat: unknown command '{}'\n{}", cmd, kUsage);
  return 2;
}
