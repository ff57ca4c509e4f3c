#include "scanners/test_samples.hpp"

#include <zip.h>

#include <cstring>
#include <stdexcept>

namespace moat::scanners::testing {

std::string make_pe() {
  std::string b(512, '\0');
  auto put16 = [&](std::size_t at, std::uint16_t v) {
    b[at] = static_cast<char>(v & 0xff);
    b[at + 1] = static_cast<char>(v >> 8);
  };
  b[0] = 'M';
  b[1] = 'Z';
  b[0x3c] = static_cast<char>(0x80);
  std::memcpy(b.data() + 0x80, "PE\0\0", 4);
  put16(0x84, 0x14c);   // i386
  put16(0x94, 0xe0);    // optional header size
  put16(0x96, 0x0102);  // executable image
  put16(0x98, 0x10b);   // PE32
  return b;
}

std::string make_zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  zip_error_t err;
  zip_error_init(&err);
  zip_source_t* out = zip_source_buffer_create(nullptr, 0, 0, &err);
  zip_t* za = zip_open_from_source(out, ZIP_TRUNCATE, &err);
  if (!za) throw std::runtime_error("zip_open_from_source");
  zip_source_keep(out);
  for (const auto& [name, content] : entries) {
    zip_source_t* s = zip_source_buffer(za, content.data(), content.size(), 0);
    zip_int64_t idx = zip_file_add(za, name.c_str(), s, ZIP_FL_ENC_UTF_8);
    zip_set_file_compression(za, static_cast<zip_uint64_t>(idx), ZIP_CM_STORE, 0);
  }
  if (zip_close(za) != 0) throw std::runtime_error("zip_close");
  std::string bytes;
  zip_source_open(out);
  zip_source_seek(out, 0, SEEK_END);
  zip_int64_t size = zip_source_tell(out);
  zip_source_seek(out, 0, SEEK_SET);
  bytes.resize(static_cast<std::size_t>(size));
  zip_source_read(out, bytes.data(), static_cast<zip_uint64_t>(size));
  zip_source_close(out);
  zip_source_free(out);
  zip_error_fini(&err);
  return bytes;
}

std::string base64(const std::string& data) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t line = 0;
  for (std::size_t i = 0; i < data.size(); i += 3) {
    std::uint32_t n = static_cast<unsigned char>(data[i]) << 16;
    if (i + 1 < data.size()) n |= static_cast<unsigned char>(data[i + 1]) << 8;
    if (i + 2 < data.size()) n |= static_cast<unsigned char>(data[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < data.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += i + 2 < data.size() ? kAlphabet[n & 63] : '=';
    if ((line += 4) >= 76) {
      out += "\r\n";
      line = 0;
    }
  }
  return out;
}

}  // namespace moat::scanners::testing
