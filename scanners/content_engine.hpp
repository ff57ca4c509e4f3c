// ContentEngine: a rule set compiled into one Hyperscan block-mode database per target class,
// and the scan that dispatches a parsed message's targets to them.
// A CompiledRules is immutable once built and shared by every session through a
// shared_ptr<const CompiledRules>; a reload builds a new one (off the event loop) and swaps it
// in RuleStore, while scans in flight keep the snapshot they started with.
// Compilation may use an on-disk cache keyed by SHA-256 of the expressions, flags and ids of each
// database plus hs_version() and the host platform, so that a restart does not recompile.
// The raw target's database is compiled in stream mode: a RawStream can be fed the message
// while DATA arrives, so that end of data only closes the stream instead of rescanning; without
// one, scan() streams the whole raw message in one call.
#pragma once

#include <hs/hs.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "policy/result.hpp"
#include "scanners/mime.hpp"
#include "scanners/rule_file.hpp"

namespace moat::scanners {

struct EngineOptions {
  std::string cache_dir;  // "" = no cache; an unwritable dir is skipped (compiles every time)
};

// One rule that fired: its first match names where.
struct RuleHit {
  const Rule* rule = nullptr;
  std::string where;    // "subject", "header From", "part 2 (a.zip) entry x.exe", "url ..."
  std::string snippet;  // up to ~80 bytes of the decoded target around the match end
  unsigned count = 0;   // matches seen (0 for a combination rule)
};

class RawStream;

struct ScanReport {
  std::vector<RuleHit> hits;  // rules that fired, after combinations, in rule-file order
};

class CompiledRules {
 public:
  ~CompiledRules();
  CompiledRules(const CompiledRules&) = delete;
  CompiledRules& operator=(const CompiledRules&) = delete;

  // Compiles `rules`. A pattern Hyperscan refuses yields "file:line: reason" naming its rule.
  // `from_cache` (optional) counts databases loaded from the cache instead of compiled.
  static Result<std::shared_ptr<const CompiledRules>> build(RuleSet rules, const EngineOptions& opts,
                                                            int* from_cache = nullptr);

  // Scans every target of `msg` (and `raw` for the raw target). Thread-safe; scratch space is
  // per thread. Counts hits per rule. With `streamed` (a RawStream of this set that was fed
  // exactly `raw`), the raw target is not scanned again: the stream is closed and its matches
  // used; `streamed` is spent afterwards.
  ScanReport scan(const MimeMessage& msg, std::string_view raw, RawStream* streamed = nullptr) const;

  const RuleSet& rules() const { return rules_; }
  // Times each rule has fired since this set was built (index = position in rules().rules).
  std::uint64_t hit_count(std::size_t rule_index) const { return counters_[rule_index].load(); }
  std::uint64_t generation() const { return generation_; }

 private:
  CompiledRules() = default;
  struct Db {
    hs_database_t* db = nullptr;
    std::vector<unsigned> rule_of;  // Hyperscan id → rule index
  };
  struct ScanState;
  void scan_one(Target t, std::string_view data, const std::string& where,
                std::string_view header_name, ScanState& st) const;
  hs_scratch_t* thread_scratch() const;
  friend class RawStream;

  RuleSet rules_;
  Db dbs_[kTargetCount + 1];  // + one for header:NAME rules
  hs_scratch_t* prototype_ = nullptr;
  std::uint64_t generation_ = 0;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counters_;
};

// The raw target scanned as the message arrives (Hyperscan stream mode). Keeps its rule-set
// snapshot alive. Use from one thread at a time.
class RawStream {
 public:
  explicit RawStream(std::shared_ptr<const CompiledRules> rules);
  ~RawStream();
  RawStream(const RawStream&) = delete;
  RawStream& operator=(const RawStream&) = delete;

  // Scans the next bytes of the message (header + body as received, in order).
  void feed(std::string_view chunk);
  const std::shared_ptr<const CompiledRules>& rules() const { return rules_; }

 private:
  friend class CompiledRules;
  static int on_match(unsigned id, unsigned long long from, unsigned long long to, unsigned flags, void* ctx);
  // Closes the stream (reporting end-anchored matches); idempotent.
  void close();

  std::shared_ptr<const CompiledRules> rules_;
  hs_stream_t* stream_ = nullptr;
  std::vector<unsigned> counts_;           // per rule index
  std::vector<unsigned long long> first_;  // per rule: end offset of the first match
};

// Fails when Hyperscan cannot run on this CPU (hs_valid_platform).
Result<bool> check_hyperscan_platform();

// The current rule set of a running server. swap() from any thread; current() gives a snapshot.
class RuleStore {
 public:
  std::shared_ptr<const CompiledRules> current() const {
    std::lock_guard lock(mu_);
    return current_;
  }
  void swap(std::shared_ptr<const CompiledRules> next) {
    std::lock_guard lock(mu_);
    current_ = std::move(next);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const CompiledRules> current_;
};

}  // namespace moat::scanners
