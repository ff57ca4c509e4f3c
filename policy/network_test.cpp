// Tests for policy/network.hpp: address parsing (IPv4-mapped folded to IPv4) and CIDR matching.
#include "policy/network.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace moat::policy {
namespace {

using namespace std::string_view_literals;
using Bytes = std::array<std::uint8_t, 16>;

TEST_CASE("IpAddress::parse reads IPv4 and IPv6 and folds IPv4-mapped to IPv4") {
  struct Row {
    std::string_view text;
    bool v4;
    Bytes bytes;  // v4 in bytes 0..3, the rest zero
    std::string_view canonical;
  };
  // clang-format off
  const Row rows[] = {
    {"192.0.2.1", true, {192, 0, 2, 1}, "192.0.2.1"},
    {"0.0.0.0", true, {}, "0.0.0.0"},
    {"255.255.255.255", true, {255, 255, 255, 255}, "255.255.255.255"},
    {"2001:db8::1", false, {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, "2001:db8::1"},
    {"2001:DB8:0:0:0:0:0:1", false, {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, "2001:db8::1"},
    {"::1", false, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, "::1"},
    {"::", false, {}, "::"},
    // What a dual-stack socket reports for an IPv4 client: the same address as 192.0.2.1.
    {"::ffff:192.0.2.1", true, {192, 0, 2, 1}, "192.0.2.1"},
    {"::FFFF:c000:0201", true, {192, 0, 2, 1}, "192.0.2.1"},
    // Not mapped: IPv4-compatible (::/96) and NAT64 (64:ff9b::/96) stay IPv6.
    {"::192.0.2.1", false, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1}, "::192.0.2.1"},
    {"64:ff9b::192.0.2.1", false, {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1}, "64:ff9b::c000:201"},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.text);
    auto ip = IpAddress::parse(row.text);
    REQUIRE(ip.has_value());
    CHECK(ip->is_v4() == row.v4);
    CHECK(ip->bytes() == row.bytes);
    CHECK(ip->to_string() == row.canonical);
  }
}

TEST_CASE("IpAddress::parse refuses what is not an address") {
  // clang-format off
  const std::string_view rows[] = {
    "", " ", "192.0.2", "192.0.2.256", "192.0.2.1.1", "192.0.2.-1", " 192.0.2.1", "192.0.2.1 ",
    "192.0.2.1/32", "[192.0.2.1]", "example.test", "2001:db8::g", "2001:db8:::1", "1:2:3:4:5:6:7:8:9",
    "[::1]", "fe80::1%eth0", "::ffff:192.0.2.256",
    // An embedded NUL must not end the text early.
    "192.0.2.1\0junk"sv, "::1\0junk"sv,
    "1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc:dddd",  // too many groups
  };
  // clang-format on
  for (auto text : rows) {
    CAPTURE(text);
    CHECK_FALSE(IpAddress::parse(text).has_value());
  }
}

TEST_CASE("IpAddress equality sees through IPv4-mapped form") {
  auto a = IpAddress::parse("192.0.2.1");
  auto b = IpAddress::parse("::ffff:192.0.2.1");
  auto c = IpAddress::parse("192.0.2.2");
  auto d = IpAddress::parse("::192.0.2.1");
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(c);
  REQUIRE(d);
  CHECK(*a == *b);
  CHECK_FALSE(*a == *c);
  CHECK_FALSE(*a == *d);
}

TEST_CASE("Cidr::parse accepts networks and host addresses") {
  struct Row {
    std::string_view text;
    int prefix_len;
    bool v4;
    std::string_view canonical;
  };
  // clang-format off
  const Row rows[] = {
    {"10.0.0.0/8", 8, true, "10.0.0.0/8"},
    {"192.0.2.0/24", 24, true, "192.0.2.0/24"},
    {"192.0.2.128/25", 25, true, "192.0.2.128/25"},
    {"192.0.2.1/32", 32, true, "192.0.2.1/32"},
    {"192.0.2.1", 32, true, "192.0.2.1/32"},        // bare address: a host prefix
    {"0.0.0.0/0", 0, true, "0.0.0.0/0"},
    {"2001:db8::/32", 32, false, "2001:db8::/32"},
    {"2001:db8::1", 128, false, "2001:db8::1/128"},
    {"2001:db8::/127", 127, false, "2001:db8::/127"},
    {"::/0", 0, false, "::/0"},
    {"::ffff:192.0.2.1", 32, true, "192.0.2.1/32"},  // mapped: folded to IPv4
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.text);
    auto c = Cidr::parse(row.text);
    REQUIRE(c.has_value());
    CHECK(c->prefix_len() == row.prefix_len);
    CHECK(c->is_v4() == row.v4);
    CHECK(c->to_string() == row.canonical);
  }
}

TEST_CASE("Cidr::parse refuses host bits, bad prefixes and bad addresses") {
  // clang-format off
  const std::string_view rows[] = {
    // Host bits set beyond the prefix: a typo must not widen a rule.
    "10.1.2.3/8", "192.0.2.1/24", "192.0.2.129/25", "192.0.2.1/31", "0.0.0.1/0",
    "2001:db8::1/64", "2001:db8::/16", "::1/127",
    // Bad prefixes.
    "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/-0", "0.0.0.0/-0", "10.0.0.0/+8",
    "10.0.0.0/8x", "10.0.0.0/ 8", "10.0.0.0/8 ", "10.0.0.0/8/8", "10.0.0.0/0x8",
    "10.0.0.0/99999999999", "2001:db8::/129", "::/-0",
    // Bad addresses.
    "", "/8", "10.0.0/8", "example.test/8", "10.0.0.0 /8",
  };
  // clang-format on
  for (auto text : rows) {
    CAPTURE(text);
    CHECK_FALSE(Cidr::parse(text).has_value());
  }
}

TEST_CASE("Cidr::contains matches by prefix and family") {
  struct Row {
    std::string_view cidr;
    std::string_view ip;
    bool contains;
  };
  // clang-format off
  const Row rows[] = {
    {"10.0.0.0/8", "10.0.0.0", true},
    {"10.0.0.0/8", "10.255.255.255", true},
    {"10.0.0.0/8", "11.0.0.0", false},
    {"10.0.0.0/8", "9.255.255.255", false},
    {"192.0.2.128/25", "192.0.2.128", true},
    {"192.0.2.128/25", "192.0.2.255", true},
    {"192.0.2.128/25", "192.0.2.127", false},
    {"192.0.2.0/23", "192.0.3.7", true},      // a prefix that ends inside an octet
    {"192.0.2.0/23", "192.0.4.0", false},
    {"172.16.0.0/12", "172.31.255.255", true},
    {"172.16.0.0/12", "172.32.0.0", false},
    {"192.0.2.1", "192.0.2.1", true},
    {"192.0.2.1", "192.0.2.2", false},
    {"0.0.0.0/0", "203.0.113.9", true},
    {"0.0.0.0/0", "2001:db8::1", false},      // families never match each other
    {"::/0", "2001:db8::1", true},
    {"::/0", "192.0.2.1", false},
    {"2001:db8::/32", "2001:db8:ffff::1", true},
    {"2001:db8::/32", "2001:db9::1", false},
    {"2001:db8::/33", "2001:db8:7fff::1", true},
    {"2001:db8::/33", "2001:db8:8000::1", false},
    {"2001:db8::1", "2001:db8::1", true},
    {"2001:db8::1", "2001:db8::2", false},
    // An IPv4 client on a dual-stack socket matches the IPv4 rule, and only that.
    {"192.0.2.0/24", "::ffff:192.0.2.77", true},
    {"::ffff:192.0.2.0", "192.0.2.0", true},
    {"192.0.2.0/24", "::192.0.2.77", false},
    {"10.0.0.0/8", "::ffff:11.0.0.1", false},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.cidr);
    CAPTURE(row.ip);
    auto c = Cidr::parse(row.cidr);
    auto ip = IpAddress::parse(row.ip);
    REQUIRE(c.has_value());
    REQUIRE(ip.has_value());
    CHECK(c->contains(*ip) == row.contains);
  }
}

}  // namespace
}  // namespace moat::policy
