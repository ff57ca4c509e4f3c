#include "gateway/smtp/body_filter.hpp"

namespace moat::gateway {

void BodyFilter::emit(std::string_view bytes, std::string& out) {
  size_ += bytes.size();
  if (size_ > max_size_) fail(Error::TooBig);
  if (error_ == Error::None) out.append(bytes);
}

void BodyFilter::bare(std::string& out) {
  if (mode_ == policy::BareNewline::Normalize) {
    emit("\r\n", out);
    line_len_ = 0;
  } else {
    fail(Error::BareNewline);
  }
}

void BodyFilter::feed(std::string_view in, std::string& out) {
  std::size_t run = 0;  // start of the current run of ordinary bytes
  auto flush = [&](std::size_t end) {
    if (end > run) emit(in.substr(run, end - run), out);
  };
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (pending_cr_) {
      pending_cr_ = false;
      if (c == '\n') {
        emit("\r\n", out);
        line_len_ = 0;
        run = i + 1;
        continue;
      }
      bare(out);  // CR not followed by LF
    }
    if (c == '\r') {
      flush(i);
      pending_cr_ = true;
      run = i + 1;
    } else if (c == '\n') {
      flush(i);
      bare(out);
      run = i + 1;
    } else {
      if (c == '\0') fail(Error::Nul);
      if (++line_len_ + 2 > max_line_) fail(Error::LineTooLong);
    }
  }
  flush(in.size());
}

void BodyFilter::feed_line(std::string_view text, std::string& out) {
  feed(text, out);
  feed("\r\n", out);
}

void BodyFilter::finish(std::string& out) {
  if (pending_cr_) {
    pending_cr_ = false;
    bare(out);
  }
}

policy::Reply BodyFilter::reply() const {
  switch (error_) {
    case Error::BareNewline:
      return {550, "5.6.0", "Message refused: bare CR or LF in content (RFC 5321 2.3.8)"};
    case Error::Nul:
      return {550, "5.6.0", "Message refused: NUL character in content"};
    case Error::LineTooLong:
      return {550, "5.6.0", "Message refused: line longer than " + std::to_string(max_line_) +
                                " octets (RFC 5321 4.5.3.1.6)"};
    case Error::TooBig:
      return {552, "5.3.4", "Message size exceeds fixed maximum message size"};
    case Error::None:
      break;
  }
  return {250, "2.0.0", "Ok"};
}

}  // namespace moat::gateway
