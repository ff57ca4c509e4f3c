#include "policy/network.hpp"

#include <algorithm>
#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace moat::policy {

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  if (text.empty() || text.size() > 64) return std::nullopt;
  // inet_pton reads a C string: an embedded NUL would hide whatever follows it.
  if (text.find('\0') != std::string_view::npos) return std::nullopt;
  std::string s(text);
  IpAddress ip;
  if (inet_pton(AF_INET, s.c_str(), ip.bytes_.data()) == 1) {
    ip.v4_ = true;
    return ip;
  }
  if (inet_pton(AF_INET6, s.c_str(), ip.bytes_.data()) == 1) {
    static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(ip.bytes_.data(), kMapped, 12) == 0) {
      std::memmove(ip.bytes_.data(), ip.bytes_.data() + 12, 4);
      std::memset(ip.bytes_.data() + 4, 0, 12);
      ip.v4_ = true;
    } else {
      ip.v4_ = false;
    }
    return ip;
  }
  return std::nullopt;
}

std::string IpAddress::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(v4_ ? AF_INET : AF_INET6, bytes_.data(), buf, sizeof buf);
  return buf;
}

std::optional<Cidr> Cidr::parse(std::string_view text) {
  auto slash = text.find('/');
  auto ip = IpAddress::parse(text.substr(0, slash));
  if (!ip) return std::nullopt;
  const int max = ip->is_v4() ? 32 : 128;
  int len = max;
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    // Digits only: from_chars into an int would also take a sign ("/-0").
    if (digits.empty() || digits.front() < '0' || digits.front() > '9') return std::nullopt;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
    if (ec != std::errc() || end != digits.data() + digits.size() || len < 0 || len > max)
      return std::nullopt;
  }
  Cidr c;
  c.net_ = *ip;
  c.len_ = len;
  // Refuse host bits: "10.1.2.3/8" is almost always a mistake.
  const auto& b = ip->bytes();
  for (int bit = len; bit < max; ++bit)
    if (b[bit / 8] & (0x80 >> (bit % 8))) return std::nullopt;
  return c;
}

Cidr Cidr::of(const IpAddress& ip, int len) {
  Cidr c;
  c.net_ = ip;
  c.len_ = std::clamp(len, 0, ip.is_v4() ? 32 : 128);
  for (int bit = c.len_; bit < 128; ++bit)
    c.net_.bytes_[bit / 8] &= static_cast<std::uint8_t>(~(0x80 >> (bit % 8)));
  return c;
}

bool Cidr::contains(const IpAddress& ip) const {
  if (ip.is_v4() != net_.is_v4()) return false;
  const auto& a = ip.bytes();
  const auto& n = net_.bytes();
  int full = len_ / 8;
  if (std::memcmp(a.data(), n.data(), full) != 0) return false;
  int rest = len_ % 8;
  if (rest == 0) return true;
  std::uint8_t mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (a[full] & mask) == (n[full] & mask);
}

std::string Cidr::to_string() const { return net_.to_string() + "/" + std::to_string(len_); }

}  // namespace moat::policy
