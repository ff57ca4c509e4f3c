// Resolver: the DNS interface every authentication and reputation check uses (SPF, DKIM key
// fetch, DMARC, DNSBL). The production implementation is asynchronous on the asio loop with a
// shared TTL cache; StaticResolver answers from a fixed table for unit tests.
// Contract: lookup() never throws and never blocks the event loop. A timeout, SERVFAIL, REFUSED
// or malformed answer is DnsStatus::TempFail (callers turn it into a temperror finding, never a
// pass); NXDOMAIN and an empty answer are distinct because SPF's void-lookup limit needs both.
#pragma once

#include <asio/awaitable.hpp>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moat::auth {

enum class RrType { A, AAAA, TXT, MX, PTR };
enum class DnsStatus { Ok, NxDomain, NoData, TempFail };

struct MxRecord {
  std::uint16_t preference = 0;
  std::string host;
};

struct DnsResult {
  DnsStatus status = DnsStatus::TempFail;
  // A/AAAA: addresses in text form ("192.0.2.1", "2001:db8::1"); TXT: one string per record,
  // its character-strings joined; PTR: host names without the trailing dot.
  std::vector<std::string> records;
  std::vector<MxRecord> mx;  // MX only
  std::string error;         // why, for TempFail (logged, shown in findings)
};

class Resolver {
 public:
  virtual ~Resolver() = default;
  // Looks `name` (no trailing dot needed) up for `type`. See the file comment for the contract.
  virtual asio::awaitable<DnsResult> lookup(std::string name, RrType type) = 0;
};

// A fixed table, for tests: names not in it are NXDOMAIN. Names are matched case-insensitively
// by the caller's convention of passing lowercase names.
class StaticResolver : public Resolver {
 public:
  void add(std::string name, RrType type, DnsResult result) {
    table_[{std::move(name), type}] = std::move(result);
  }
  asio::awaitable<DnsResult> lookup(std::string name, RrType type) override {
    auto it = table_.find({name, type});
    if (it != table_.end()) co_return it->second;
    bool exists = false;
    for (const auto& [key, value] : table_) exists = exists || key.first == name;
    DnsResult r;
    r.status = exists ? DnsStatus::NoData : DnsStatus::NxDomain;
    co_return r;
  }

 private:
  std::map<std::pair<std::string, RrType>, DnsResult> table_;
};

}  // namespace moat::auth
