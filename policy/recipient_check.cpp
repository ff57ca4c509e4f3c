#include "policy/recipient_check.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>

namespace moat::policy {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

RecipientCheck::RecipientCheck(std::string file, RelayCheck relay)
    : file_(std::move(file)), relay_(std::move(relay)) {
  reload_if_changed();
}

void RecipientCheck::reload_if_changed() {
  auto now = std::chrono::steady_clock::now();
  if (now < next_stat_) return;
  next_stat_ = now + std::chrono::seconds(1);
  struct stat st {};
  if (::stat(file_.c_str(), &st) != 0) {
    spdlog::error("event=recipients_file_error file={} error=\"cannot stat; keeping {} entries\"",
                  file_, valid_.size());
    return;
  }
  if (st.st_mtim.tv_sec == mtime_.tv_sec && st.st_mtim.tv_nsec == mtime_.tv_nsec) return;
  std::ifstream in(file_);
  if (!in) {
    spdlog::error("event=recipients_file_error file={} error=\"cannot read; keeping {} entries\"",
                  file_, valid_.size());
    return;
  }
  std::unordered_set<std::string> fresh;
  std::string line;
  while (std::getline(in, line)) {
    std::string_view l = trim(std::string_view(line).substr(0, line.find('#')));
    if (!l.empty()) fresh.insert(ascii_lower(l));
  }
  valid_ = std::move(fresh);
  mtime_ = st.st_mtim;
  spdlog::info("event=recipients_loaded file={} entries={}", file_, valid_.size());
}

Verdict RecipientCheck::decide(std::string_view address) {
  auto at = address.rfind('@');
  if (at == std::string_view::npos) return Verdict::next();
  std::string domain = ascii_lower(address.substr(at + 1));
  if (!domain.empty() && domain.back() == '.') domain.pop_back();
  if (!relay_.is_local_domain(domain)) return Verdict::next();
  reload_if_changed();
  std::string full = ascii_lower(address.substr(0, at + 1)) + domain;
  if (valid_.count(full) || valid_.count("@" + domain)) return Verdict::next();
  return Verdict::reject(550, "5.1.1", "Recipient address rejected: User unknown");
}

asio::awaitable<Verdict> RecipientCheck::run(Stage, MessageContext& ctx) {
  if (!ctx.current_rcpt || ctx.current_rcpt->path.postmaster) co_return Verdict::next();
  co_return decide(ctx.current_rcpt->address);
}

}  // namespace moat::policy
