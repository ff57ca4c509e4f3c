// The durable spool. A message's state is the directory its queue file sits in:
//   incoming/   being received; never acknowledged (removed at startup)
//   active/     accepted (250 given), waiting for delivery
//   deferred/ hold/ quarantine/   later states; corrupt/  files that failed to parse at startup
// Every state change is a rename. A queue file is the message bytes (Moat's Received header
// first), then the envelope text, then a fixed-size trailer giving the envelope's offset:
//   <message> <envelope> "moat-trailer " <20-digit offset> "\n"
// so the envelope can be written after the message has streamed in, without copying it.
// Delivery progress (recipients done, attempts, next retry) is recorded by appending a newer
// envelope and trailer; the newest whole trailer wins, so a torn append loses nothing.
//
// Acknowledgement order (why 250 means the message survives a crash or kill -9):
//   write incoming/QID → fsync(file) → rename to active/QID → fsync(active/) → 250.
#pragma once

#include <cstdint>
#include <memory>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/spool/envelope.hpp"
#include "policy/result.hpp"
#include "policy/verdict.hpp"

namespace moat::gateway {

// A queue file being written in incoming/. Writes are buffered; the first I/O error is kept and
// everything after it is dropped, so the session can finish reading the message and then answer.
class SpoolFile {
 public:
  SpoolFile(int fd, std::string path, std::string qid);
  SpoolFile(const SpoolFile&) = delete;
  SpoolFile& operator=(const SpoolFile&) = delete;
  ~SpoolFile();  // an uncommitted file is removed

  const std::string& qid() const { return qid_; }
  void write(std::string_view bytes);
  int error() const { return errno_; }  // 0 or the errno of the first failure

  // Appends the envelope and trailer, fsyncs, renames into `state_dir` and fsyncs that
  // directory. Blocking: run it off the event loop. On failure the Error's message starts with
  // "4.3.1" (storage full) or "4.3.0"; the file is removed unless it was already renamed
  // (then only the directory fsync failed, and a retry by the client may duplicate it).
  Result<bool> commit(const SpoolEnvelope& env, const std::string& state_dir);

 private:
  bool flush();

  int fd_;
  std::string path_;
  std::string qid_;
  std::string buf_;
  std::uint64_t offset_ = 0;  // bytes written to fd so far
  int errno_ = 0;
  bool committed_ = false;
};

struct SpooledMessage {
  SpoolEnvelope envelope;  // the newest one
  std::string message;     // byte-exact as stored (Received header first)
  std::uint64_t valid_size = 0;  // file size up to the newest whole trailer
};

class Spool {
 public:
  // Opens (creating as needed) the spool directory and its state subdirectories.
  static Result<std::unique_ptr<Spool>> open(const std::string& dir);
  ~Spool();

  // Unique, time-sortable queue id: 11 base32 digits of microseconds, 3 random digits.
  std::string new_qid();
  // Creates incoming/QID for a new message (qid from new_qid()).
  Result<std::unique_ptr<SpoolFile>> create(const std::string& qid);
  // Commits into active/ (or another state): SpoolFile::commit, then an fsync of the directory
  // shared with the commits running at the same time (group commit). Blocking. If only the
  // directory fsync fails, the file is queued but the caller must not answer 250 (the client
  // retries: a possible duplicate, never a loss).
  Result<bool> commit(SpoolFile& file, const SpoolEnvelope& env, std::string_view state = "active");

  // Records a new envelope for a queued message (delivery progress) by appending it, then
  // moves the file from state `from` to `to` (may be equal). Blocking.
  Result<bool> update(std::string_view from, const SpoolEnvelope& env, std::string_view to);
  // Moves a queue file between states; removes one whose delivery is finished. Blocking.
  Result<bool> move(std::string_view from, std::string_view qid, std::string_view to);
  // durable = false skips the directory fsync: for a delivered message, whose unlink lost in
  // a crash only means delivering it again (at-least-once), one fsync saved per message.
  Result<bool> remove(std::string_view state, std::string_view qid, bool durable = true);

  struct Recovery {
    std::size_t queued = 0;       // valid files in active/ and deferred/
    std::size_t incomplete = 0;   // unacknowledged files removed from incoming/
    std::size_t corrupt = 0;      // moved to corrupt/
  };
  // At startup: removes incoming/ leftovers, moves unparsable queue files to corrupt/.
  Recovery recover();

  // Reads a queue file back; state is "active", "quarantine", ...
  Result<SpooledMessage> read(std::string_view state, std::string_view qid) const;
  std::vector<std::string> list(std::string_view state) const;  // qids, sorted

  const std::string& dir() const { return dir_; }
  static Result<SpooledMessage> read_file(const std::string& path);

 private:
  explicit Spool(std::string dir) : dir_(std::move(dir)) {}
  int state_fd(std::string_view state) const;

  // fsync of a state directory, shared by the commits waiting for one (group commit).
  Result<bool> sync_dir(std::string_view state);

  struct DirSync {
    std::mutex m;
    std::condition_variable cv;
    std::uint64_t requested = 0;  // tickets handed out: one per rename
    std::uint64_t synced = 0;     // every ticket up to this is on disk
    bool busy = false;            // an fsync is running
  };

  std::string dir_;
  std::vector<std::pair<std::string, int>> state_fds_;
  std::map<std::string, DirSync, std::less<>> dir_sync_;
  std::uint64_t last_us_ = 0;
  std::mt19937_64 rng_{std::random_device{}()};
};

// The states, in the order recover() walks them.
inline constexpr std::string_view kSpoolStates[] = {"incoming", "active",     "deferred",
                                                    "hold",     "quarantine", "corrupt"};

}  // namespace moat::gateway
