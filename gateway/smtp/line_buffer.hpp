// LineBuffer: the bounded input buffer of one SMTP session.
// Only CRLF ends a line (RFC 5321 §2.3.8): a bare LF or bare CR stays inside the line, where the
// caller sees it and refuses it, so Moat and a downstream MTA can never disagree about where a
// line (and so a command or the message) ends. Memory is bounded before the delimiter arrives:
// a line longer than the limit is discarded as it streams in and reported once, when its CRLF
// comes.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace moat::gateway {

class LineBuffer {
 public:
  explicit LineBuffer(std::size_t capacity) : buf_(capacity) {}

  struct Line {
    std::string_view text;  // without the CRLF; empty when too_long
    bool too_long = false;
  };

  // Next complete line, at most `max` octets including CRLF; nullopt when more input is needed.
  // The view stays valid until the next call that changes the buffer.
  std::optional<Line> next_line(std::size_t max);

  // Where to read new input into; never empty (the buffer compacts or discards to make room).
  std::span<char> write_area();
  void commit(std::size_t n) { end_ += n; }

  // Bytes received but not yet consumed (for BDAT chunks and the STARTTLS purge).
  std::string_view pending() const { return {buf_.data() + start_, end_ - start_}; }
  void consume(std::size_t n);
  void clear() { start_ = end_ = scan_ = 0; discarding_ = false; }

 private:
  std::vector<char> buf_;
  std::size_t start_ = 0;  // first unconsumed byte
  std::size_t end_ = 0;    // one past the last received byte
  std::size_t scan_ = 0;   // where the search for CRLF resumes (no CRLF before it)
  bool discarding_ = false;  // inside a too-long line
};

}  // namespace moat::gateway
