// Tests for policy/header_fields.hpp: splitting a header section into fields (folding, the
// empty line, malformed lines) and removing fields by (name, occurrence).
#include "policy/header_fields.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace moat::policy {
namespace {

TEST_CASE("header fields: split") {
  const std::string m =
      "Received: from a\r\n\tby b\r\n"
      "From: A <a@example.test>\r\n"
      "Subject : hi\r\n"
      "\r\n"
      "Body: not a field\r\n";
  auto h = split_header(m);
  REQUIRE(h.fields.size() == 3);
  CHECK(h.fields[0].name == "Received");
  CHECK(h.fields[0].value == " from a\r\n\tby b");
  CHECK(h.fields[0].raw == "Received: from a\r\n\tby b");
  CHECK(h.fields[0].offset == 0);
  CHECK(h.fields[1].name == "From");
  CHECK(h.fields[2].name == "Subject");
  CHECK(h.fields[2].value == " hi");
  CHECK(m.substr(h.body_offset) == "Body: not a field\r\n");
  CHECK_FALSE(h.malformed);

  struct Row {
    std::string message;
    std::size_t fields;
    bool malformed;
    std::size_t body_offset;
  };
  const Row rows[] = {
      {"", 0, false, 0},
      {"\r\nbody", 0, false, 2},
      {"A: 1\r\nB: 2", 2, false, 10},        // no empty line, no final CRLF
      {"A: 1\r\nno colon here\r\n\r\n", 2, true, 23},
      {" leading continuation\r\nA: 1\r\n\r\n", 2, true, 31},
      {": empty name\r\n\r\n", 1, true, 16},
  };
  for (const auto& row : rows) {
    CAPTURE(row.message);
    auto s = split_header(row.message);
    CHECK(s.fields.size() == row.fields);
    CHECK(s.malformed == row.malformed);
    CHECK(s.body_offset == row.body_offset);
  }
}

TEST_CASE("header fields: remove by name and occurrence") {
  const std::string m =
      "Authentication-Results: mx.example.test; spf=pass\r\n"
      "From: a@example.test\r\n"
      "authentication-results: other.test;\r\n\tdkim=pass\r\n"
      "Authentication-Results: mx.example.test; dkim=pass\r\n"
      "\r\n"
      "Authentication-Results: in the body stays\r\n";
  struct Row {
    std::vector<HeaderRemoval> removals;
    std::string expected;
  };
  const Row rows[] = {
      {{}, m},
      {{{"Authentication-Results", 0}, {"AUTHENTICATION-RESULTS", 2}},
       "From: a@example.test\r\n"
       "authentication-results: other.test;\r\n\tdkim=pass\r\n"
       "\r\n"
       "Authentication-Results: in the body stays\r\n"},
      {{{"Authentication-Results", 1}},
       "Authentication-Results: mx.example.test; spf=pass\r\n"
       "From: a@example.test\r\n"
       "Authentication-Results: mx.example.test; dkim=pass\r\n"
       "\r\n"
       "Authentication-Results: in the body stays\r\n"},
      {{{"Authentication-Results", 3}, {"X-Absent", 0}}, m},
      {{{"From", 0}},
       "Authentication-Results: mx.example.test; spf=pass\r\n"
       "authentication-results: other.test;\r\n\tdkim=pass\r\n"
       "Authentication-Results: mx.example.test; dkim=pass\r\n"
       "\r\n"
       "Authentication-Results: in the body stays\r\n"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.removals.size());
    CHECK(remove_header_fields(m, row.removals) == row.expected);
  }
  // The last field of a message without a body.
  CHECK(remove_header_fields("A: 1\r\nB: 2", {{"B", 0}}) == "A: 1\r\n");
  CHECK(remove_header_fields("A: 1\r\nB: 2\r\n", {{"A", 0}}) == "B: 2\r\n");
}

}  // namespace
}  // namespace moat::policy
