// BodyFilter: checks message content on its way to the spool, for DATA and BDAT alike.
// Content must be lines ending in CRLF. A bare CR or bare LF is what SMTP smuggling is made of:
// by default it marks the message for rejection; with bare_newline = "normalize" it is rewritten
// to CRLF, so that what Moat passes on can be split only where Moat split it. NUL is always
// refused (no BINARYMIME). Line length and message size are bounded; once the message is
// doomed, nothing more is written out but input is still consumed to the end of the message.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "policy/config.hpp"
#include "policy/verdict.hpp"

namespace moat::gateway {

class BodyFilter {
 public:
  enum class Error { None, BareNewline, Nul, LineTooLong, TooBig };

  BodyFilter(std::uint64_t max_size, std::size_t max_line, policy::BareNewline mode)
      : max_size_(max_size), max_line_(max_line), mode_(mode) {}

  // Checks `in` and appends the bytes to store to `out`.
  void feed(std::string_view in, std::string& out);
  // DATA: one line as read (CRLF removed, dot-stuffing already undone).
  void feed_line(std::string_view text, std::string& out);
  // The line reader found a line longer than the limit.
  void line_too_long() { fail(Error::LineTooLong); }
  // End of content: a CR left pending at the very end is a bare CR.
  void finish(std::string& out);

  Error error() const { return error_; }
  std::uint64_t size() const { return size_; }  // octets stored (or that would have been)
  // The reply for a refused message; meaningful when error() != None.
  policy::Reply reply() const;

 private:
  void fail(Error e) {
    if (error_ == Error::None) error_ = e;
  }
  void emit(std::string_view bytes, std::string& out);
  void bare(std::string& out);

  std::uint64_t max_size_;
  std::size_t max_line_;
  policy::BareNewline mode_;
  Error error_ = Error::None;
  std::uint64_t size_ = 0;
  std::size_t line_len_ = 0;
  bool pending_cr_ = false;
};

}  // namespace moat::gateway
