// Tests for gateway/smtp/line_buffer.hpp: only CRLF ends a line (RFC 5321 §2.3.8), an over-long
// line is reported once when its CRLF arrives, and memory never grows past the capacity whatever
// the input and however it is split into reads.
#include "gateway/smtp/line_buffer.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace moat::gateway {
namespace {

using namespace std::string_view_literals;

struct Out {
  std::string text;
  bool too_long = false;
  bool operator==(const Out&) const = default;
};

std::string show(const std::vector<Out>& lines) {
  std::string s;
  for (const auto& l : lines) {
    s += l.too_long ? "<too long>" : "[" + l.text + "]";
    s += " ";
  }
  return s;
}

Out ok(std::string text) { return {std::move(text), false}; }
Out too_long() { return {"", true}; }

// Reads `input` the way a session does: drain complete lines, then read at most `chunk` octets
// into write_area(), commit, repeat. Checks the memory bound after every step.
std::vector<Out> feed(LineBuffer& buf, std::size_t capacity, std::string_view input,
                      std::size_t chunk, std::size_t max) {
  std::vector<Out> lines;
  auto drain = [&] {
    while (auto line = buf.next_line(max)) {
      if (line->too_long) CHECK(line->text.empty());
      lines.push_back({std::string(line->text), line->too_long});
      REQUIRE(buf.pending().size() <= capacity);
    }
    REQUIRE(buf.pending().size() <= capacity);
  };
  std::size_t pos = 0;
  while (pos < input.size()) {
    drain();
    auto area = buf.write_area();
    REQUIRE(area.size() > 0);  // "never empty"
    REQUIRE(buf.pending().size() + area.size() <= capacity);
    std::size_t n = std::min({area.size(), chunk, input.size() - pos});
    std::memcpy(area.data(), input.data() + pos, n);
    buf.commit(n);
    pos += n;
    REQUIRE(buf.pending().size() <= capacity);
  }
  drain();
  return lines;
}

const std::size_t kChunks[] = {1, 2, 3, 5, 7, 16, 64, 1000000};

TEST_CASE("line buffer: only CRLF ends a line, bare LF and bare CR stay inside it") {
  struct Row {
    std::string_view input;
    std::vector<Out> lines;
    std::string_view pending;  // left after the last complete line
  };
  // clang-format off
  const std::vector<Row> rows = {
    {"", {}, ""},
    {"a\r\n", {ok("a")}, ""},
    {"\r\n", {ok("")}, ""},
    {"\r\n\r\n", {ok(""), ok("")}, ""},
    {"EHLO x\r\nMAIL FROM:<>\r\n", {ok("EHLO x"), ok("MAIL FROM:<>")}, ""},
    {"a\nb\r\n", {ok("a\nb")}, ""},
    {"a\rb\r\n", {ok("a\rb")}, ""},
    {"a\r\r\n", {ok("a\r")}, ""},
    {"a\n\r\n", {ok("a\n")}, ""},
    {"\n\r\n", {ok("\n")}, ""},
    {"\n.\n\r\n", {ok("\n.\n")}, ""},               // the smuggling shape: one line, not three
    {"a\n\rb\r\n", {ok("a\n\rb")}, ""},
    {"a\r\nb\r\nc", {ok("a"), ok("b")}, "c"},
    {"a\n", {}, "a\n"},
    {"a\r", {}, "a\r"},
    {"a\n\r", {}, "a\n\r"},
    {"a\r\nb\n", {ok("a")}, "b\n"},
    {".\r\n", {ok(".")}, ""},
    {"x\0y\r\n"sv, {ok(std::string("x\0y", 3))}, ""},  // NUL is data here
  };
  // clang-format on
  for (const auto& row : rows) {
    for (std::size_t chunk : kChunks) {
      CAPTURE(row.input);
      CAPTURE(chunk);
      LineBuffer buf(64);
      auto lines = feed(buf, 64, row.input, chunk, 62);
      CAPTURE(show(lines));
      CHECK(lines == row.lines);
      CHECK(buf.pending() == row.pending);
    }
  }
}

TEST_CASE("line buffer: a line over the limit is reported once, after its CRLF") {
  const std::size_t max = 16;  // octets including CRLF: at most 14 of text
  const std::string input = std::string(14, 'A') + "\r\n" +         // exactly at the limit
                            std::string(15, 'B') + "\r\n" +         // one octet over
                            std::string(200, 'C') + "\r\n" +        // far over
                            "ok\r\n" +
                            std::string(100, 'D') + "\n\r" + std::string(50, 'd') + "\r\n" +
                            std::string(13, 'E') + "\r\r\n" +       // 13 + bare CR: 14 of text
                            std::string(14, 'F') + "\r\r\n" +       // 15 of text: over
                            std::string(15, 'G') + "\r" +           // over, then CR ... CR LF
                            std::string(7, 'g') + "\r\n" +
                            "end\r\n";
  const std::vector<Out> want = {ok(std::string(14, 'A')), too_long(), too_long(), ok("ok"),
                                 too_long(), ok(std::string(13, 'E') + "\r"), too_long(),
                                 too_long(), ok("end")};
  // Capacities from just above the limit (constant compaction) to roomy.
  for (std::size_t capacity : {17u, 18u, 20u, 31u, 64u, 4096u}) {
    for (std::size_t chunk : kChunks) {
      CAPTURE(capacity);
      CAPTURE(chunk);
      LineBuffer buf(capacity);
      auto lines = feed(buf, capacity, input, chunk, max);
      CAPTURE(show(lines));
      CHECK(lines == want);
      CHECK(buf.pending().empty());
    }
  }
}

TEST_CASE("line buffer: every split point of a too-long line gives the same answer") {
  // Feed in two reads split at every position, so the CRLF and the limit fall on both sides.
  const std::size_t max = 10;
  const std::string input = "0123456789ABCDEF\r\nshort\r\n0123456\r\n01234567\r\n";
  const std::vector<Out> want = {too_long(), ok("short"), ok("0123456"), ok("01234567")};
  for (std::size_t capacity : {11u, 12u, 16u, 25u, 128u}) {
    for (std::size_t split = 0; split <= input.size(); ++split) {
      CAPTURE(capacity);
      CAPTURE(split);
      LineBuffer buf(capacity);
      auto lines = feed(buf, capacity, input.substr(0, split), input.size(), max);
      auto rest = feed(buf, capacity, std::string_view(input).substr(split), input.size(), max);
      lines.insert(lines.end(), rest.begin(), rest.end());
      CAPTURE(show(lines));
      CHECK(lines == want);
    }
  }
}

TEST_CASE("line buffer: memory stays bounded on an endless line") {
  const std::size_t capacity = 1024;
  LineBuffer buf(capacity);
  std::string junk(1 << 20, 'x');  // 1 MiB without a line end, bare LFs and CRs sprinkled in
  for (std::size_t i = 100; i < junk.size(); i += 4099) junk[i] = '\n';
  for (std::size_t i = 211; i < junk.size(); i += 3001) junk[i] = '\r';
  for (std::size_t chunk : {1u, 1000u, 4096u}) {
    CAPTURE(chunk);
    buf.clear();
    std::string input = junk + "\r\nQUIT\r\n";
    auto lines = feed(buf, capacity, input, chunk, 1000);
    CAPTURE(show(lines));
    CHECK(lines == std::vector<Out>{too_long(), ok("QUIT")});
  }
}

TEST_CASE("line buffer: CRLF split across two reads") {
  LineBuffer buf(64);
  auto lines = feed(buf, 64, "HELO x\r", 64, 64);
  CHECK(lines.empty());
  CHECK(buf.pending() == "HELO x\r");
  lines = feed(buf, 64, "\nNOOP\r", 64, 64);
  CHECK(lines == std::vector<Out>{ok("HELO x")});
  lines = feed(buf, 64, "\n", 64, 64);
  CHECK(lines == std::vector<Out>{ok("NOOP")});
  CHECK(buf.pending().empty());
}

TEST_CASE("line buffer: CRLF split across a compaction") {
  // Capacity 8: "ab\r\n" is taken, "12345" then needs the space it used.
  LineBuffer buf(8);
  auto lines = feed(buf, 8, "ab\r\n1234", 8, 8);
  CHECK(lines == std::vector<Out>{ok("ab")});
  CHECK(buf.pending() == "1234");
  lines = feed(buf, 8, "5\r", 8, 8);
  CHECK(lines.empty());
  lines = feed(buf, 8, "\n", 8, 8);
  CHECK(lines == std::vector<Out>{ok("12345")});
}

TEST_CASE("line buffer: pending, consume and clear") {
  LineBuffer buf(64);
  CHECK(buf.pending().empty());
  CHECK(buf.write_area().size() == 64);

  // A BDAT chunk and the next command arrive together: the session consumes the chunk octets
  // and reads the command from what is left.
  feed(buf, 64, "hello", 64, 62);
  CHECK(buf.pending() == "hello");
  std::string more = "world\r\nQUIT\r\n";
  auto area = buf.write_area();
  std::memcpy(area.data(), more.data(), more.size());
  buf.commit(more.size());
  CHECK(buf.pending() == "helloworld\r\nQUIT\r\n");
  buf.consume(5);
  CHECK(buf.pending() == "world\r\nQUIT\r\n");
  auto line = buf.next_line(62);
  REQUIRE(line);
  CHECK(line->text == "world");
  CHECK(buf.pending() == "QUIT\r\n");
  buf.consume(buf.pending().size());
  CHECK(buf.pending().empty());
  CHECK_FALSE(buf.next_line(62));
  CHECK(buf.write_area().size() == 64);  // fully consumed: the whole buffer is free again

  // A CR consumed as chunk data does not pair with an LF that comes after it.
  feed(buf, 64, "abc\r", 64, 62);
  buf.consume(4);
  auto lines = feed(buf, 64, "\nxyz\r\n", 64, 62);
  CHECK(lines == std::vector<Out>{ok("\nxyz")});

  // clear() drops buffered input (the STARTTLS purge) and any too-long state.
  feed(buf, 64, "EHLO x\r\nMAIL FROM:<>\r\n", 64, 62);  // lines read, nothing pending
  feed(buf, 64, "injected command\r\nRCPT", 64, 62);
  buf.clear();
  CHECK(buf.pending().empty());
  CHECK_FALSE(buf.next_line(62));
  lines = feed(buf, 64, std::string(100, 'x'), 64, 20);  // now inside a too-long line
  CHECK(lines.empty());
  buf.clear();
  lines = feed(buf, 64, "ok\r\n", 64, 20);
  CHECK(lines == std::vector<Out>{ok("ok")});
}

}  // namespace
}  // namespace moat::gateway
