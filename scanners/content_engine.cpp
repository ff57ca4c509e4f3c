#include "scanners/content_engine.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

namespace moat::scanners {
namespace {

constexpr int kNamedHeader = kTargetCount;  // the database for header:NAME rules (value only)

std::atomic<std::uint64_t> g_generation{0};

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// Length of the valid UTF-8 sequence at s[i], 0 when invalid.
std::size_t utf8_len(std::string_view s, std::size_t i) {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k)
    if ((b(i + k) & 0xC0) != 0x80) return 0;
  if (n == 2 && c < 0xC2) return 0;                                   // overlong
  if (n == 3 && c == 0xE0 && b(i + 1) < 0xA0) return 0;               // overlong
  if (n == 3 && c == 0xED && b(i + 1) >= 0xA0) return 0;              // surrogate
  if (n == 4 && (c > 0xF4 || (c == 0xF0 && b(i + 1) < 0x90) || (c == 0xF4 && b(i + 1) >= 0x90))) return 0;
  return n;
}

// Hyperscan's utf8 mode needs valid UTF-8 input: invalid bytes become '?'.
std::string_view valid_utf8(std::string_view s, std::string& storage) {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t n = utf8_len(s, i);
    if (n == 0) break;
    i += n;
  }
  if (i == s.size()) return s;
  storage.assign(s.substr(0, i));
  while (i < s.size()) {
    std::size_t n = utf8_len(s, i);
    if (n == 0) {
      storage += '?';
      ++i;
    } else {
      storage.append(s.substr(i, n));
      i += n;
    }
  }
  return storage;
}

std::string snippet_at(std::string_view data, std::size_t to) {
  std::size_t from = to > 60 ? to - 60 : 0;
  std::size_t end = std::min(data.size(), to + 20);
  while (from < to && (static_cast<unsigned char>(data[from]) & 0xC0) == 0x80) ++from;
  while (end > to && end < data.size() && (static_cast<unsigned char>(data[end]) & 0xC0) == 0x80) --end;
  std::string out(data.substr(from, end - from));
  for (auto& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  return out;
}

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

std::string platform_key() {
  hs_platform_info_t p{};
  hs_populate_platform(&p);
  return fmt::format("{}|tune={}|cpu={}|", hs_version(), p.tune, p.cpu_features);
}

hs_database_t* load_cached(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return nullptr;
  std::stringstream buf;
  buf << in.rdbuf();
  std::string bytes = buf.str();
  hs_database_t* db = nullptr;
  if (hs_deserialize_database(bytes.data(), bytes.size(), &db) != HS_SUCCESS) return nullptr;
  return db;
}

void store_cached(const std::string& dir, const std::string& path, const hs_database_t* db) {
  char* bytes = nullptr;
  size_t len = 0;
  if (hs_serialize_database(db, &bytes, &len) != HS_SUCCESS) return;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::string tmp = fmt::format("{}.tmp.{}", path, getpid());
  bool ok = false;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (out) {
      out.write(bytes, static_cast<std::streamsize>(len));
      ok = static_cast<bool>(out.flush());
    }
  }
  std::free(bytes);
  // A cache that cannot be written is only slower restarts: note it and go on.
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    spdlog::warn("event=rules_cache_unwritable dir={}", dir);
  }
}

struct ThreadScratch {
  hs_scratch_t* scratch = nullptr;
  std::uint64_t generation = 0;
  ~ThreadScratch() {
    if (scratch) hs_free_scratch(scratch);
  }
};

}  // namespace

struct CompiledRules::ScanState {
  std::vector<unsigned> counts;
  std::vector<RuleHit> first;  // per rule: where the first match was
  const CompiledRules* self = nullptr;
  const Db* db = nullptr;
  std::string_view data;
  const std::string* where = nullptr;
  std::string_view header_name;
};

Result<bool> check_hyperscan_platform() {
  if (hs_valid_platform() != HS_SUCCESS)
    return Result<bool>::fail("this CPU cannot run Hyperscan (SSSE3 is required): content rules are unavailable");
  return true;
}

CompiledRules::~CompiledRules() {
  for (auto& d : dbs_)
    if (d.db) hs_free_database(d.db);
  if (prototype_) hs_free_scratch(prototype_);
}

Result<std::shared_ptr<const CompiledRules>> CompiledRules::build(RuleSet rules, const EngineOptions& opts,
                                                                  int* from_cache) {
  using R = Result<std::shared_ptr<const CompiledRules>>;
  std::shared_ptr<CompiledRules> self(new CompiledRules());
  self->rules_ = std::move(rules);
  self->generation_ = ++g_generation;
  self->counters_ = std::make_unique<std::atomic<std::uint64_t>[]>(self->rules_.rules.size());
  if (from_cache) *from_cache = 0;
  std::vector<std::string> errors;
  for (int slot = 0; slot <= kTargetCount; ++slot) {
    Db& d = self->dbs_[slot];
    std::vector<const char*> exprs;
    std::vector<unsigned> flags, ids;
    std::string key = platform_key() + std::to_string(slot) + (slot == static_cast<int>(Target::Raw) ? "stream" : "block");
    for (unsigned i = 0; i < self->rules_.rules.size(); ++i) {
      const Rule& r = self->rules_.rules[i];
      if (!r.has_pattern()) continue;
      int want = r.target == Target::Header && !r.header_name.empty() ? kNamedHeader : static_cast<int>(r.target);
      if (want != slot) continue;
      unsigned f = r.flags | (r.min_count == 1 ? HS_FLAG_SINGLEMATCH : 0u);
      ids.push_back(static_cast<unsigned>(d.rule_of.size()));
      d.rule_of.push_back(i);
      exprs.push_back(r.expression.c_str());
      flags.push_back(f);
      key += fmt::format("\n{}\x1f{}\x1f{}", r.id, f, r.expression);
    }
    if (exprs.empty()) continue;
    std::string path;
    if (!opts.cache_dir.empty()) {
      path = (std::filesystem::path(opts.cache_dir) / (sha256_hex(key) + ".hsdb")).string();
      if ((d.db = load_cached(path))) {
        if (from_cache) ++*from_cache;
        continue;
      }
    }
    hs_compile_error_t* err = nullptr;
    // The raw target is streamed while DATA arrives (RawStream); the others are block scans.
    unsigned mode = slot == static_cast<int>(Target::Raw) ? HS_MODE_STREAM : HS_MODE_BLOCK;
    if (hs_compile_multi(exprs.data(), flags.data(), ids.data(), static_cast<unsigned>(exprs.size()),
                         mode, nullptr, &d.db, &err) != HS_SUCCESS) {
      if (err && err->expression >= 0 && static_cast<std::size_t>(err->expression) < d.rule_of.size()) {
        const Rule& r = self->rules_.rules[d.rule_of[static_cast<std::size_t>(err->expression)]];
        errors.push_back(fmt::format("{}:{}: rule '{}': Hyperscan refuses the pattern: {}", r.file, r.line,
                                     r.id, err->message));
      } else {
        errors.push_back(fmt::format("rules: Hyperscan cannot compile the {} database: {}",
                                     slot == kNamedHeader ? "header:NAME" : to_string(static_cast<Target>(slot)),
                                     err ? err->message : "?"));
      }
      hs_free_compile_error(err);
      d.db = nullptr;
      continue;
    }
    if (!path.empty()) store_cached(opts.cache_dir, path, d.db);
  }
  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) all += (all.empty() ? "" : "\n") + e;
    return R::fail(all);
  }
  for (auto& d : self->dbs_)
    if (d.db && hs_alloc_scratch(d.db, &self->prototype_) != HS_SUCCESS)
      return R::fail("rules: cannot allocate Hyperscan scratch space");
  return std::shared_ptr<const CompiledRules>(std::move(self));
}

hs_scratch_t* CompiledRules::thread_scratch() const {
  thread_local ThreadScratch ts;
  if (ts.generation == generation_) return ts.scratch;
  if (!prototype_) return nullptr;
  if (!ts.scratch) {
    if (hs_clone_scratch(prototype_, &ts.scratch) != HS_SUCCESS) return nullptr;
  } else {
    // The thread's scratch served another rule set: grow it to fit this one too (a no-op when
    // it is large enough), so sessions on two sets during a reload share it.
    for (const auto& d : dbs_)
      if (d.db && hs_alloc_scratch(d.db, &ts.scratch) != HS_SUCCESS) return nullptr;
  }
  ts.generation = generation_;
  return ts.scratch;
}

void CompiledRules::scan_one(Target t, std::string_view data, const std::string& where,
                             std::string_view header_name, ScanState& st) const {
  int slot = static_cast<int>(t);
  if (t == Target::Header && !header_name.empty() && where != "header") slot = kNamedHeader;
  const Db& d = dbs_[slot];
  if (!d.db) return;
  hs_scratch_t* scratch = thread_scratch();
  if (!scratch) return;
  std::string storage;
  if (t != Target::Raw && t != Target::AttachmentContent) data = valid_utf8(data, storage);
  st.db = &d;
  st.data = data;
  st.where = &where;
  st.header_name = header_name;
  auto on_match = [](unsigned id, unsigned long long, unsigned long long to, unsigned, void* ctx) -> int {
    auto* s = static_cast<ScanState*>(ctx);
    unsigned ri = s->db->rule_of[id];
    const Rule& r = s->self->rules_.rules[ri];
    if (!r.header_name.empty() && !iequal(r.header_name, s->header_name)) return 0;
    if (s->counts[ri]++ == 0) {
      s->first[ri].where = *s->where;
      s->first[ri].snippet = snippet_at(s->data, static_cast<std::size_t>(to));
    }
    return 0;
  };
  // An empty buffer still matters for anchored patterns; Hyperscan accepts a null pointer only
  // with length 0.
  hs_scan(d.db, data.data(), static_cast<unsigned>(std::min<std::size_t>(data.size(), UINT32_MAX)), 0,
          scratch, on_match, &st);
}

ScanReport CompiledRules::scan(const MimeMessage& msg, std::string_view raw, RawStream* streamed) const {
  ScanState st;
  st.self = this;
  const auto& rules = rules_.rules;
  st.counts.assign(rules.size(), 0);
  st.first.resize(rules.size());

  for (const auto& h : msg.headers) {
    scan_one(Target::Header, h.value, "header " + h.name, h.name, st);
    scan_one(Target::Header, h.name + ": " + h.value, "header", h.name, st);
  }
  scan_one(Target::Subject, msg.subject, "subject", {}, st);
  scan_one(Target::FromName, msg.from_display, "from display name", {}, st);
  {
    // Raw: from the stream fed during DATA, or streamed now in one piece.
    std::optional<RawStream> local;
    if (!streamed || streamed->rules_.get() != this) {
      local.emplace(std::shared_ptr<const CompiledRules>(std::shared_ptr<const CompiledRules>(), this));
      local->feed(raw);
      streamed = &*local;
    }
    streamed->close();
    for (std::size_t i = 0; i < streamed->counts_.size(); ++i) {
      if (streamed->counts_[i] == 0) continue;
      st.counts[i] += streamed->counts_[i];
      st.first[i].where = "raw message";
      st.first[i].snippet = snippet_at(raw, static_cast<std::size_t>(std::min<unsigned long long>(streamed->first_[i], raw.size())));
    }
  }
  for (const auto& p : msg.parts) {
    std::string where = p.describe();
    if (!p.text.empty()) {
      if (p.is_html()) {
        scan_one(Target::Html, p.text, where, {}, st);
        scan_one(Target::Body, html_to_text(p.text), where, {}, st);
      } else {
        scan_one(Target::Body, p.text, where, {}, st);
      }
    }
    if (!p.filename.empty()) scan_one(Target::AttachmentName, p.filename, where, {}, st);
    if (p.attachment) {
      scan_one(Target::AttachmentType, p.true_type, where, {}, st);
      if (!p.data.empty()) scan_one(Target::AttachmentContent, p.data, where, {}, st);
    }
    for (const auto& e : p.zip_entries) {
      std::string entry = where + " entry " + e.name;
      scan_one(Target::AttachmentName, e.name, entry, {}, st);
      if (!e.true_type.empty()) scan_one(Target::AttachmentType, e.true_type, entry, {}, st);
    }
  }
  for (const auto& u : msg.urls) {
    scan_one(Target::Url, u, "url " + u, {}, st);
    std::string host = url_host(u);
    scan_one(Target::Domain, host, "url " + u, {}, st);
  }

  // Pattern rules first, then combinations over them (one level: the parser refuses deeper).
  std::vector<bool> matched(rules.size());
  for (std::size_t i = 0; i < rules.size(); ++i)
    matched[i] = rules[i].has_pattern() && st.counts[i] >= rules[i].min_count;
  std::map<std::string_view, std::size_t> index;
  for (std::size_t i = 0; i < rules.size(); ++i) index[rules[i].id] = i;
  auto fired = [&](const std::string& id) {
    auto it = index.find(id);
    return it != index.end() && matched[it->second];
  };
  ScanReport report;
  for (std::size_t i = 0; i < rules.size(); ++i) {
    const Rule& r = rules[i];
    bool ok = r.has_pattern() ? matched[i] : true;
    for (const auto& req : r.requires_all) ok = ok && fired(req);
    for (const auto& un : r.unless_any) ok = ok && !fired(un);
    if (!ok) continue;
    RuleHit hit = st.first[i];
    hit.rule = &r;
    hit.count = st.counts[i];
    if (!r.has_pattern()) {
      hit.where = "combination";
      for (const auto& req : r.requires_all) hit.snippet += (hit.snippet.empty() ? "" : " and ") + req;
      for (const auto& un : r.unless_any) hit.snippet += " and not " + un;
    }
    counters_[i].fetch_add(1, std::memory_order_relaxed);
    report.hits.push_back(std::move(hit));
  }
  return report;
}

RawStream::RawStream(std::shared_ptr<const CompiledRules> rules) : rules_(std::move(rules)) {
  counts_.assign(rules_->rules_.rules.size(), 0);
  first_.assign(counts_.size(), 0);
  const auto& d = rules_->dbs_[static_cast<int>(Target::Raw)];
  if (d.db && hs_open_stream(d.db, 0, &stream_) != HS_SUCCESS) stream_ = nullptr;
}

RawStream::~RawStream() {
  // Closing without a scratch discards pending matches: nothing wants them any more.
  if (stream_) hs_close_stream(stream_, nullptr, nullptr, nullptr);
}

int RawStream::on_match(unsigned id, unsigned long long, unsigned long long to, unsigned, void* ctx) {
  auto* self = static_cast<RawStream*>(ctx);
  unsigned ri = self->rules_->dbs_[static_cast<int>(Target::Raw)].rule_of[id];
  if (self->counts_[ri]++ == 0) self->first_[ri] = to;
  return 0;
}

void RawStream::feed(std::string_view chunk) {
  if (!stream_ || chunk.empty()) return;
  hs_scratch_t* scratch = rules_->thread_scratch();
  if (!scratch) return;
  while (!chunk.empty()) {
    std::size_t n = std::min<std::size_t>(chunk.size(), 1u << 30);
    hs_scan_stream(stream_, chunk.data(), static_cast<unsigned>(n), 0, scratch, on_match, this);
    chunk.remove_prefix(n);
  }
}

void RawStream::close() {
  if (!stream_) return;
  hs_scratch_t* scratch = rules_->thread_scratch();
  hs_close_stream(stream_, scratch, scratch ? on_match : nullptr, this);
  stream_ = nullptr;
}

}  // namespace moat::scanners
