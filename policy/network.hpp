// IP addresses and CIDR prefixes for access control. IPv4-mapped IPv6 addresses
// (::ffff:192.0.2.1, as a dual-stack socket reports IPv4 clients) are folded to IPv4 so that
// one rule matches a client however it connected.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moat::policy {

class IpAddress {
 public:
  IpAddress() = default;
  // Parses "192.0.2.1" or "2001:db8::1"; nullopt when it is neither.
  static std::optional<IpAddress> parse(std::string_view text);

  bool is_v4() const { return v4_; }
  const std::array<std::uint8_t, 16>& bytes() const { return bytes_; }  // v4 in bytes 0..3
  std::string to_string() const;
  bool operator==(const IpAddress&) const = default;

 private:
  friend class Cidr;
  bool v4_ = true;
  std::array<std::uint8_t, 16> bytes_{};
};

class Cidr {
 public:
  // Parses "10.0.0.0/8", "2001:db8::/32" or a bare address (a host prefix); nullopt on error.
  // Host bits set beyond the prefix are an error, so that a typo cannot widen a rule.
  static std::optional<Cidr> parse(std::string_view text);

  // The network of `ip` with `len` prefix bits (host bits cleared), e.g. the /24 of a client.
  static Cidr of(const IpAddress& ip, int len);
  bool contains(const IpAddress& ip) const;
  int prefix_len() const { return len_; }
  bool is_v4() const { return net_.is_v4(); }
  std::string to_string() const;

 private:
  IpAddress net_;
  int len_ = 0;
};

}  // namespace moat::policy
