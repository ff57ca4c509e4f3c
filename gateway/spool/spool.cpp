#include "gateway/spool/spool.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>

namespace moat::gateway {
namespace {

constexpr std::string_view kTrailer = "moat-trailer ";
constexpr std::size_t kTrailerSize = 13 + 20 + 1;
constexpr std::size_t kWriteBuffer = 64 * 1024;
constexpr char kBase32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";  // Crockford: sorts as it counts

Error io_error(int err, std::string_view what) {
  bool full = err == ENOSPC || err == EDQUOT;
  return Error{fmt::format("{} {}: {}", full ? "4.3.1" : "4.3.0", what, std::strerror(err))};
}

bool write_all(int fd, const char* p, std::size_t n, int& err) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      err = errno;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool valid_qid(std::string_view q) {
  return q.size() == 14 && std::all_of(q.begin(), q.end(), [](char c) {
           return std::strchr(kBase32, c) != nullptr && c != 0;
         });
}

}  // namespace

SpoolFile::SpoolFile(int fd, std::string path, std::string qid)
    : fd_(fd), path_(std::move(path)), qid_(std::move(qid)) {
  buf_.reserve(kWriteBuffer);
}

SpoolFile::~SpoolFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(path_.c_str());
}

bool SpoolFile::flush() {
  if (errno_ == 0 && !buf_.empty()) {
    if (write_all(fd_, buf_.data(), buf_.size(), errno_)) offset_ += buf_.size();
  }
  buf_.clear();
  return errno_ == 0;
}

void SpoolFile::write(std::string_view bytes) {
  if (errno_ != 0) return;
  if (buf_.size() + bytes.size() > kWriteBuffer) {
    flush();
    if (bytes.size() >= kWriteBuffer) {
      if (write_all(fd_, bytes.data(), bytes.size(), errno_)) offset_ += bytes.size();
      return;
    }
  }
  buf_.append(bytes);
}

Result<bool> SpoolFile::commit(const SpoolEnvelope& env, const std::string& state_dir) {
  flush();
  std::uint64_t env_offset = offset_;
  SpoolEnvelope first = env;
  first.message_size = env_offset;
  write(serialize(first));
  write(fmt::format("{}{:020}\n", kTrailer, env_offset));
  if (!flush()) return io_error(errno_, "write");
  // The data must be on disk before the rename makes it visible as queued...
  if (::fsync(fd_) != 0) return io_error(errno, "fsync");
  std::string target = state_dir + "/" + qid_;
  if (::rename(path_.c_str(), target.c_str()) != 0) return io_error(errno, "rename");
  committed_ = true;
  path_ = target;
  return true;
}

Result<std::unique_ptr<Spool>> Spool::open(const std::string& dir) {
  using R = Result<std::unique_ptr<Spool>>;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return R::fail(fmt::format("{}: {}", dir, ec.message()));
  std::unique_ptr<Spool> s(new Spool(dir));
  for (auto state : kSpoolStates) {
    std::string path = fmt::format("{}/{}", dir, state);
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
      return R::fail(fmt::format("{}: {}", path, std::strerror(errno)));
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return R::fail(fmt::format("{}: {}", path, std::strerror(errno)));
    s->state_fds_.emplace_back(std::string(state), fd);
    s->dir_sync_.try_emplace(std::string(state));
  }
  if (::access((dir + "/incoming").c_str(), W_OK) != 0)
    return R::fail(fmt::format("{}/incoming: not writable: {}", dir, std::strerror(errno)));
  return s;
}

Spool::~Spool() {
  for (auto& [name, fd] : state_fds_) ::close(fd);
}

int Spool::state_fd(std::string_view state) const {
  for (auto& [name, fd] : state_fds_)
    if (name == state) return fd;
  return -1;
}

std::string Spool::new_qid() {
  auto now = std::chrono::system_clock::now().time_since_epoch();
  std::uint64_t us = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
  us = std::max(us, last_us_ + 1);  // strictly increasing within this process
  last_us_ = us;
  std::string q(14, '0');
  for (int i = 10; i >= 0; --i, us >>= 5) q[i] = kBase32[us & 31];
  std::uint64_t r = rng_();
  for (int i = 11; i < 14; ++i, r >>= 5) q[i] = kBase32[r & 31];
  return q;
}

Result<std::unique_ptr<SpoolFile>> Spool::create(const std::string& qid) {
  using R = Result<std::unique_ptr<SpoolFile>>;
  std::string path = fmt::format("{}/incoming/{}", dir_, qid);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return R(io_error(errno, "create"));
  return std::make_unique<SpoolFile>(fd, path, qid);
}

Result<bool> Spool::commit(SpoolFile& file, const SpoolEnvelope& env, std::string_view state) {
  auto done = file.commit(env, fmt::format("{}/{}", dir_, state));
  if (!done) return done;
  // The rename must be on disk before we answer 250. If only this fsync fails, the file
  // stays queued and the client is told to retry: a possible duplicate, never a loss.
  return sync_dir(state);
}

// Group commit: each caller has renamed a file into `state` and needs an fsync of the
// directory that started after its rename. One fsync covers every rename before it, so while
// one runs, the callers that arrive meanwhile wait and the next fsync covers them all: with
// many sessions committing at once there are far fewer directory fsyncs than messages.
// A failed fsync fails only its leader; the others try again (as the next leader).
Result<bool> Spool::sync_dir(std::string_view state) {
  DirSync& ds = dir_sync_.find(state)->second;
  std::unique_lock lock(ds.m);
  const std::uint64_t ticket = ++ds.requested;
  while (ds.synced < ticket) {
    if (ds.busy) {
      ds.cv.wait(lock);
      continue;
    }
    ds.busy = true;
    const std::uint64_t covers = ds.requested;
    lock.unlock();
    int rc = ::fsync(state_fd(state));
    int err = errno;
    lock.lock();
    ds.busy = false;
    if (rc == 0) ds.synced = std::max(ds.synced, covers);
    ds.cv.notify_all();
    if (rc != 0) return io_error(err, "fsync directory");
  }
  return true;
}

Result<SpooledMessage> Spool::read_file(const std::string& path) {
  using R = Result<SpooledMessage>;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return R::fail(fmt::format("{}: {}", path, std::strerror(errno)));
  struct stat st {};
  std::string data;
  bool ok = ::fstat(fd, &st) == 0;
  if (ok) {
    data.resize(static_cast<std::size_t>(st.st_size));
    std::size_t got = 0;
    while (got < data.size()) {
      ssize_t n = ::pread(fd, data.data() + got, data.size() - got, static_cast<off_t>(got));
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    ok = got == data.size();
  }
  ::close(fd);
  if (!ok) return R::fail(fmt::format("{}: read error", path));
  // The newest envelope is the one the last complete trailer points to. An update torn by a
  // crash leaves a partial envelope after it; envelope text escapes spaces, so no part of one
  // can look like a trailer, and searching backwards finds the last whole update.
  std::string_view all = data;
  std::size_t end = all.size();
  while (true) {
    std::size_t at = all.rfind(kTrailer, end);
    if (at == std::string_view::npos) return R::fail(fmt::format("{}: no trailer", path));
    std::uint64_t off = 0;
    const char* digits = data.data() + at + kTrailer.size();
    bool whole = at + kTrailerSize <= all.size() && all[at + kTrailerSize - 1] == '\n';
    if (whole) {
      auto [p, ec] = std::from_chars(digits, digits + 20, off);
      whole = ec == std::errc() && p == digits + 20 && off <= at;
    }
    if (whole) {
      auto env = parse_envelope(all.substr(off, at - off));
      if (!env) return R::fail(fmt::format("{}: {}", path, env.error().message));
      if (env->message_size > off) return R::fail(fmt::format("{}: bad message_size", path));
      SpooledMessage m{std::move(*env), {}, at + kTrailerSize};
      m.message = data.substr(0, m.envelope.message_size);
      return m;
    }
    if (at == 0) return R::fail(fmt::format("{}: no trailer", path));
    end = at - 1;
  }
}

Result<bool> Spool::update(std::string_view from, const SpoolEnvelope& env, std::string_view to) {
  std::string path = fmt::format("{}/{}/{}", dir_, from, env.qid);
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return io_error(errno, "open for update");
  // Append the new envelope and its trailer; the old ones stay as they were, so a crash at
  // any point leaves either the old or the new state readable.
  std::string text = serialize(env);
  struct stat st {};
  ::fstat(fd, &st);
  text += fmt::format("{}{:020}\n", kTrailer, static_cast<std::uint64_t>(st.st_size));
  int err = 0;
  bool ok = write_all(fd, text.data(), text.size(), err) && ::fsync(fd) == 0;
  if (!ok && err == 0) err = errno;
  ::close(fd);
  if (!ok) return io_error(err, "update");
  if (from != to) {
    std::string target = fmt::format("{}/{}/{}", dir_, to, env.qid);
    if (::rename(path.c_str(), target.c_str()) != 0) return io_error(errno, "rename");
    if (::fsync(state_fd(to)) != 0) return io_error(errno, "fsync directory");
  }
  return true;
}

Result<bool> Spool::move(std::string_view from, std::string_view qid, std::string_view to) {
  std::string source = fmt::format("{}/{}/{}", dir_, from, qid);
  std::string target = fmt::format("{}/{}/{}", dir_, to, qid);
  if (::rename(source.c_str(), target.c_str()) != 0) return io_error(errno, "rename");
  if (::fsync(state_fd(to)) != 0) return io_error(errno, "fsync directory");
  return true;
}

Result<bool> Spool::remove(std::string_view state, std::string_view qid, bool durable) {
  std::string path = fmt::format("{}/{}/{}", dir_, state, qid);
  if (::unlink(path.c_str()) != 0) return io_error(errno, "unlink");
  if (durable && ::fsync(state_fd(state)) != 0) return io_error(errno, "fsync directory");
  return true;
}

Result<SpooledMessage> Spool::read(std::string_view state, std::string_view qid) const {
  if (!valid_qid(qid)) return Result<SpooledMessage>::fail(fmt::format("bad queue id '{}'", qid));
  return read_file(fmt::format("{}/{}/{}", dir_, state, qid));
}

std::vector<std::string> Spool::list(std::string_view state) const {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(fmt::format("{}/{}", dir_, state), ec)) {
    std::string name = e.path().filename().string();
    if (valid_qid(name)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Spool::Recovery Spool::recover() {
  Recovery r;
  for (auto& qid : list("incoming")) {
    // Never acknowledged: the client was not told 250, so it still holds the message.
    if (::unlink(fmt::format("{}/incoming/{}", dir_, qid).c_str()) == 0) ++r.incomplete;
  }
  for (auto state : {"active", "deferred"}) {
    for (auto& qid : list(state)) {
      auto msg = read(state, qid);
      if (msg && msg->envelope.qid == qid) {
        ++r.queued;
        // Cut off the remains of an update torn by a crash, so the next update appends to a
        // whole file.
        std::string path = fmt::format("{}/{}/{}", dir_, state, qid);
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) > msg->valid_size)
          ::truncate(path.c_str(), static_cast<off_t>(msg->valid_size));
        continue;
      }
      // Never delete what we cannot read: move it aside for a human, without replacing a
      // file already there under the same name.
      std::string from = fmt::format("{}/{}/{}", dir_, state, qid);
      std::string to = fmt::format("{}/corrupt/{}", dir_, qid);
      for (int n = 1; ::access(to.c_str(), F_OK) == 0; ++n)
        to = fmt::format("{}/corrupt/{}.{}", dir_, qid, n);
      if (::rename(from.c_str(), to.c_str()) == 0) ++r.corrupt;
    }
  }
  ::fsync(state_fd("corrupt"));
  return r;
}

}  // namespace moat::gateway
