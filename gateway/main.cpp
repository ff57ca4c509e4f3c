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
#include <asio/post.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/thread_pool.hpp>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <utility>
#include <string>
#include <vector>

#include "gateway/checks.hpp"
#include "gateway/log.hpp"
#include "gateway/queue_tool.hpp"
#include "gateway/rules_tool.hpp"
#include "gateway/relay/queue_manager.hpp"
#include "gateway/server.hpp"
#include "gateway/spool/spool.hpp"
#include "gateway/tls/tls_context.hpp"
#include "policy/config.hpp"
#include "policy/pipeline.hpp"

namespace {

using namespace moat;

constexpr const char* kUsage = R"(usage:
  moat serve [--config FILE]     run the SMTP gateway (embedded default config without --config)
  moat config check FILE         validate a configuration; prints file:line: reason, exit 1 on error
  moat config default            print the embedded default configuration
  moat queue [--config FILE] list [--json] | show QID | flush [QID] | hold QID | release QID | delete QID
  moat rules [--config FILE] lint DIR | test [--rules DIR] FILE.eml
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

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
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
  asio::io_context io(1);
  auto built = gateway::make_checks(cfg, io.get_executor());
  if (!built) {
    for (const auto& line : split_lines(built.error().message))
      spdlog::critical("event=startup_failed error={}", gateway::kv(line));
    return 1;
  }
  gateway::CheckSet& checks = **built;
  policy::Pipeline& pipeline = *checks.pipeline;
  // fsync and file reads: I/O-bound, so many threads (one fsync at a time per thread).
  asio::thread_pool blocking(16);
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
  // SIGHUP: recompile the rules on the worker pool, swap on success; on failure keep the old
  // set and log each file:line error. Sessions in flight keep the snapshot they started with.
  asio::signal_set hup(io, SIGHUP);
  bool reloading = false, reload_again = false;
  std::function<void()> reload = [&] {
    if (reloading) {
      reload_again = true;  // one more pass after this one, so the newest files win
      return;
    }
    reloading = true;
    asio::post(blocking, [&] {
      auto started = std::chrono::steady_clock::now();
      auto compiled = gateway::compile_rules(cfg, cfg.rules.dir);
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
      asio::post(io, [&, compiled = std::move(compiled), ms]() mutable {
        if (compiled) {
          spdlog::info("event=rules_reloaded dir={} rules={} ms={}", gateway::kv(cfg.rules.dir),
                       (*compiled)->rules().rules.size(), ms.count());
          checks.rules.swap(std::move(*compiled));
        } else {
          for (const auto& line : split_lines(compiled.error().message))
            spdlog::error("event=rules_reload_failed error={}", gateway::kv(line));
          spdlog::error("event=rules_reload_failed keeping=previous_rules");
        }
        reloading = false;
        if (std::exchange(reload_again, false)) reload();
      });
    });
  };
  std::function<void(std::error_code, int)> on_hup = [&](std::error_code ec, int) {
    if (ec) return;
    if (cfg.rules.dir.empty()) spdlog::info("event=sighup_ignored reason=\"no [rules] dir configured\"");
    else reload();
    hup.async_wait(on_hup);
  };
  hup.async_wait(on_hup);

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
  if (cmd == "rules") {
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
    return gateway::rules_command(*config, args);
  }
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
