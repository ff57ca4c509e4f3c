#include "gateway/smtp/line_buffer.hpp"

#include <cstring>

namespace moat::gateway {

std::optional<LineBuffer::Line> LineBuffer::next_line(std::size_t max) {
  std::size_t pos = scan_ > start_ ? scan_ : start_;
  while (pos < end_) {
    const char* lf = static_cast<const char*>(std::memchr(buf_.data() + pos, '\n', end_ - pos));
    if (!lf) break;
    std::size_t at = lf - buf_.data();
    if (at > start_ && buf_[at - 1] == '\r') {
      Line line;
      std::size_t len = at + 1 - start_;  // including CRLF
      if (discarding_ || len > max) {
        line.too_long = true;
      } else {
        line.text = std::string_view(buf_.data() + start_, len - 2);
      }
      discarding_ = false;
      start_ = scan_ = at + 1;
      return line;
    }
    pos = at + 1;  // a bare LF: part of the line
  }
  scan_ = end_ > start_ ? end_ - 1 : start_;  // a CR at the very end may pair with the next LF
  if (end_ - start_ > max) {
    // Too long already: drop what we have but the last byte (it may be the CR of the CRLF).
    discarding_ = true;
    start_ = end_ - 1;
    scan_ = start_;
  }
  return std::nullopt;
}

std::span<char> LineBuffer::write_area() {
  if (end_ == buf_.size()) {
    if (start_ > 0) {
      std::memmove(buf_.data(), buf_.data() + start_, end_ - start_);
      end_ -= start_;
      scan_ = scan_ > start_ ? scan_ - start_ : 0;
      start_ = 0;
    } else {
      // Full with one unterminated line: callers bound lines below capacity, so this only
      // happens inside a too-long line; keep the last byte, drop the rest.
      discarding_ = true;
      buf_[0] = buf_[end_ - 1];
      end_ = 1;
      scan_ = 0;
    }
  }
  return {buf_.data() + end_, buf_.size() - end_};
}

void LineBuffer::consume(std::size_t n) {
  start_ += n;
  if (scan_ < start_) scan_ = start_;
  if (start_ == end_) start_ = end_ = scan_ = 0;
}

}  // namespace moat::gateway
