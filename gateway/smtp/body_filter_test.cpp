// Tests for gateway/smtp/body_filter.hpp: content must be CRLF-terminated lines (RFC 5321
// §2.3.8); bare CR / bare LF is refused or normalised to CRLF (SMTP smuggling), NUL is refused,
// lines are at most max_line octets including CRLF (§4.5.3.1.6), the message at most max_size
// (552 5.3.4, RFC 1870 / RFC 3463). The answer must not depend on how the input was chunked.
#include "gateway/smtp/body_filter.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

namespace moat::gateway {
namespace {

using namespace std::string_view_literals;
using Error = BodyFilter::Error;
using policy::BareNewline;

const char* name(Error e) {
  switch (e) {
    case Error::None: return "None";
    case Error::BareNewline: return "BareNewline";
    case Error::Nul: return "Nul";
    case Error::LineTooLong: return "LineTooLong";
    case Error::TooBig: return "TooBig";
  }
  return "?";
}

// Feeds `input` in pieces of `chunk` octets (as BDAT chunks or reads arrive), then finish().
std::string run(BodyFilter& f, std::string_view input, std::size_t chunk) {
  std::string out;
  for (std::size_t pos = 0; pos < input.size(); pos += chunk)
    f.feed(input.substr(pos, std::min(chunk, input.size() - pos)), out);
  f.finish(out);
  return out;
}

const std::size_t kChunks[] = {1, 2, 3, 4, 1000000};

TEST_CASE("body filter: clean content passes through unchanged in both modes") {
  const std::string_view inputs[] = {
      "",
      "\r\n",
      "Subject: hello\r\n\r\nbody line\r\n.\r\n..dotted\r\n",
      "no final line end",   // BDAT may end without CRLF; nothing bare in it
      "a\r\n\r\n\r\nb\r\n",
      "8bit \xC3\xBC\xE2\x82\xAC\r\n",
  };
  for (auto mode : {BareNewline::Reject, BareNewline::Normalize}) {
    for (auto input : inputs) {
      for (std::size_t chunk : kChunks) {
        CAPTURE(input);
        CAPTURE(chunk);
        CAPTURE(mode == BareNewline::Reject);
        BodyFilter f(1 << 20, 1000, mode);
        auto out = run(f, input, chunk);
        CHECK(f.error() == Error::None);
        CHECK(out == input);
        CHECK(f.size() == input.size());
      }
    }
  }
}

TEST_CASE("body filter: reject mode refuses bare CR, bare LF and NUL, however chunked") {
  struct Row {
    std::string_view input;
    Error error;
  };
  // clang-format off
  const Row rows[] = {
    {"a\nb\r\n", Error::BareNewline},
    {"\n", Error::BareNewline},
    {"a\n", Error::BareNewline},
    {"a\rb\r\n", Error::BareNewline},
    {"a\r\r\n", Error::BareNewline},
    {"\r\r\n", Error::BareNewline},
    {"a\n\r", Error::BareNewline},
    {"a\r\nb\r\n.\n", Error::BareNewline},
    {"\r\n.\r\r\n", Error::BareNewline},
    {"text\r", Error::BareNewline},          // CR at the very end: nothing can pair it now
    {"\r", Error::BareNewline},
    {"a\0b\r\n"sv, Error::Nul},
    {"\0"sv, Error::Nul},
    {"a\r\n\0\r\n"sv, Error::Nul},
    // The first problem found is the one reported.
    {"a\0b\nc\r\n"sv, Error::Nul},
    {"a\nb\0c\r\n"sv, Error::BareNewline},
    // A CR and LF in separate chunks are still a CRLF.
    {"a\r\nb\r\nc\r\n", Error::None},
  };
  // clang-format on
  for (const auto& row : rows) {
    for (std::size_t chunk : kChunks) {
      CAPTURE(row.input);
      CAPTURE(chunk);
      BodyFilter f(1 << 20, 1000, BareNewline::Reject);
      auto out = run(f, row.input, chunk);
      CAPTURE(name(f.error()));
      CHECK(f.error() == row.error);
      // What was written out is never more than the input, and holds no bare LF.
      CHECK(row.input.substr(0, out.size()) == out);
      for (std::size_t i = 0; i < out.size(); ++i)
        if (out[i] == '\n') CHECK((i > 0 && out[i - 1] == '\r'));
    }
  }
}

TEST_CASE("body filter: a CR at the end of one chunk pairs with an LF at the start of the next") {
  BodyFilter f(1 << 20, 1000, BareNewline::Reject);
  std::string out;
  f.feed("line one\r", out);
  CHECK(f.error() == Error::None);
  f.feed("\nline two\r", out);
  f.feed("\n", out);
  f.finish(out);
  CHECK(f.error() == Error::None);
  CHECK(out == "line one\r\nline two\r\n");
  // But a chunk-final CR followed by anything else is bare.
  BodyFilter g(1 << 20, 1000, BareNewline::Reject);
  std::string out2;
  g.feed("line\r", out2);
  g.feed("x\r\n", out2);
  g.finish(out2);
  CHECK(g.error() == Error::BareNewline);
  // And a CR left at the very end is bare only once finish() says no LF is coming.
  BodyFilter h(1 << 20, 1000, BareNewline::Reject);
  std::string out3;
  h.feed("line\r", out3);
  CHECK(h.error() == Error::None);
  h.finish(out3);
  CHECK(h.error() == Error::BareNewline);
}

TEST_CASE("body filter: normalize mode rewrites bare CR and bare LF to CRLF") {
  struct Row {
    std::string_view input;
    std::string_view output;
  };
  // clang-format off
  const Row rows[] = {
    {"a\nb\r\n", "a\r\nb\r\n"},
    {"a\rb\r\n", "a\r\nb\r\n"},
    {"a\r\r\n", "a\r\n\r\n"},
    {"a\n\r\n", "a\r\n\r\n"},
    {"\n\n", "\r\n\r\n"},
    {"\r\r", "\r\n\r\n"},
    {"\n\r", "\r\n\r\n"},
    {"a\r", "a\r\n"},                     // a final CR, at finish()
    {"a\r\nb\n.\n", "a\r\nb\r\n.\r\n"},   // the smuggling shape becomes lines Moat split itself
    {"a\r\n", "a\r\n"},
  };
  // clang-format on
  for (const auto& row : rows) {
    for (std::size_t chunk : kChunks) {
      CAPTURE(row.input);
      CAPTURE(chunk);
      BodyFilter f(1 << 20, 1000, BareNewline::Normalize);
      auto out = run(f, row.input, chunk);
      CHECK(f.error() == Error::None);
      CHECK(out == row.output);
      CHECK(f.size() == row.output.size());
    }
  }
  // NUL is refused in normalize mode too.
  BodyFilter f(1 << 20, 1000, BareNewline::Normalize);
  run(f, "a\0b\r\n"sv, 1000);
  CHECK(f.error() == Error::Nul);
}

TEST_CASE("body filter: line length limit counts the CRLF") {
  struct Row {
    std::string input;
    std::size_t max_line;
    BareNewline mode;
    Error error;
  };
  // clang-format off
  const Row rows[] = {
    {std::string(998, 'x') + "\r\n", 1000, BareNewline::Reject, Error::None},
    {std::string(999, 'x') + "\r\n", 1000, BareNewline::Reject, Error::LineTooLong},
    {std::string(998, 'x') + "\r\n" + std::string(998, 'y') + "\r\n", 1000, BareNewline::Reject, Error::None},
    {"short\r\n" + std::string(5000, 'x') + "\r\n", 1000, BareNewline::Reject, Error::LineTooLong},
    {std::string(8, 'x') + "\r\n", 10, BareNewline::Reject, Error::None},
    {std::string(9, 'x') + "\r\n", 10, BareNewline::Reject, Error::LineTooLong},
    {std::string(9, 'x'), 10, BareNewline::Reject, Error::LineTooLong},     // last line without CRLF
    // In normalize mode a bare line end ends the line for counting too.
    {std::string(8, 'x') + "\n" + std::string(8, 'y') + "\r\n", 10, BareNewline::Normalize, Error::None},
    {std::string(8, 'x') + "\r" + std::string(8, 'y') + "\r\n", 10, BareNewline::Normalize, Error::None},
    {std::string(5, 'x') + "\n" + std::string(9, 'y') + "\r\n", 10, BareNewline::Normalize, Error::LineTooLong},
  };
  // clang-format on
  for (const auto& row : rows) {
    for (std::size_t chunk : kChunks) {
      CAPTURE(row.input.size());
      CAPTURE(row.max_line);
      CAPTURE(chunk);
      BodyFilter f(1 << 20, row.max_line, row.mode);
      run(f, row.input, chunk);
      CAPTURE(name(f.error()));
      CHECK(f.error() == row.error);
    }
  }
  // The line reader's own report.
  BodyFilter f(1 << 20, 1000, BareNewline::Reject);
  f.line_too_long();
  CHECK(f.error() == Error::LineTooLong);
}

TEST_CASE("body filter: message size limit") {
  struct Row {
    std::string input;
    std::uint64_t max_size;
    Error error;
  };
  // clang-format off
  const Row rows[] = {
    {"12345678\r\n", 10, Error::None},         // exactly the limit
    {"123456789\r\n", 10, Error::TooBig},
    {"1234567890", 10, Error::None},
    {"12345678901", 10, Error::TooBig},
  };
  // clang-format on
  for (const auto& row : rows) {
    for (std::size_t chunk : kChunks) {
      CAPTURE(row.input);
      CAPTURE(chunk);
      BodyFilter f(row.max_size, 50, BareNewline::Reject);
      auto out = run(f, row.input, chunk);
      CAPTURE(name(f.error()));
      CHECK(f.error() == row.error);
      CHECK(out.size() <= row.max_size);
      if (row.error == Error::None) CHECK(f.size() == row.input.size());
    }
  }
  // Normalised octets count towards the size: "a\n" stores 3.
  BodyFilter n(2, 1000, BareNewline::Normalize);
  run(n, "a\n", 1);
  CHECK(n.error() == Error::TooBig);
  // Input is still consumed after the limit: size keeps counting, nothing more is stored.
  BodyFilter f(10, 1000, BareNewline::Reject);
  std::string out;
  f.feed("0123456789", out);
  f.feed("ABCDEFGHIJ\r\n", out);
  f.finish(out);
  CHECK(f.error() == Error::TooBig);
  CHECK(f.size() == 22);
  CHECK(out.size() <= 10);
}

TEST_CASE("body filter: feed_line appends the CRLF and checks the line") {
  struct Row {
    std::string_view line;
    Error error;
  };
  // clang-format off
  const Row rows[] = {
    {"Subject: x", Error::None},
    {"", Error::None},
    {"a\rb", Error::BareNewline},
    {"a\nb", Error::BareNewline},
    {"a\r", Error::BareNewline},         // on the wire "a\r\r\n": the first CR is bare
    {"\n", Error::BareNewline},
    {"a\0b"sv, Error::Nul},
  };
  // clang-format on
  for (const auto& row : rows) {
    CAPTURE(row.line);
    BodyFilter f(1 << 20, 1000, BareNewline::Reject);
    std::string out;
    f.feed_line(row.line, out);
    f.finish(out);
    CHECK(f.error() == row.error);
    if (row.error == Error::None) CHECK(out == std::string(row.line) + "\r\n");
  }
  BodyFilter f(1 << 20, 1000, BareNewline::Reject);
  std::string out;
  f.feed_line(std::string(998, 'x'), out);
  CHECK(f.error() == Error::None);
  f.feed_line(std::string(999, 'x'), out);
  CHECK(f.error() == Error::LineTooLong);
}

TEST_CASE("body filter: reply codes") {
  struct Row {
    std::string_view input;
    bool line_too_long;
    std::uint64_t max_size;
    Error error;
  };
  const Row rows[] = {
      {"a\nb\r\n", false, 1 << 20, Error::BareNewline},
      {"a\0b\r\n"sv, false, 1 << 20, Error::Nul},
      {"a\r\n", true, 1 << 20, Error::LineTooLong},
      {"0123456789\r\n", false, 5, Error::TooBig},
  };
  for (const auto& row : rows) {
    CAPTURE(name(row.error));
    BodyFilter f(row.max_size, 1000, BareNewline::Reject);
    std::string out;
    f.feed(row.input, out);
    if (row.line_too_long) f.line_too_long();
    f.finish(out);
    REQUIRE(f.error() == row.error);
    auto r = f.reply();
    CAPTURE(r.text);
    CHECK_FALSE(r.text.empty());
    if (row.error == Error::TooBig) {
      // RFC 1870 §6 / RFC 3463: message length exceeds administrative limit.
      CHECK(r.code == 552);
      CHECK(r.enhanced == "5.3.4");
    } else {
      // A permanent refusal of the content (RFC 3463 class 5, subject 6: message content).
      CHECK(r.code / 100 == 5);
      CHECK(r.enhanced.rfind("5.6.", 0) == 0);
    }
  }
}

}  // namespace
}  // namespace moat::gateway
