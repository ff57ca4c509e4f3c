#include "policy/header_fields.hpp"

#include <algorithm>

namespace moat::policy {

bool field_name_is(std::string_view name, std::string_view wanted) {
  if (name.size() != wanted.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char a = name[i], b = wanted[i];
    if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
    if (b >= 'A' && b <= 'Z') b = static_cast<char>(b - 'A' + 'a');
    if (a != b) return false;
  }
  return true;
}

HeaderSection split_header(std::string_view m) {
  HeaderSection out;
  std::size_t pos = 0;
  while (pos < m.size()) {
    // The empty line ends the header section.
    if (m.compare(pos, 2, "\r\n") == 0) {
      out.body_offset = pos + 2;
      return out;
    }
    // A field runs to the CRLF that is not followed by SP or HTAB.
    std::size_t end = pos;
    while (true) {
      std::size_t crlf = m.find("\r\n", end);
      if (crlf == std::string_view::npos) {
        end = m.size();
        break;
      }
      end = crlf;
      if (crlf + 2 < m.size() && (m[crlf + 2] == ' ' || m[crlf + 2] == '\t')) {
        end = crlf + 2;
        continue;
      }
      break;
    }
    HeaderField f;
    f.raw = m.substr(pos, end - pos);
    f.offset = pos;
    auto colon = f.raw.find(':');
    if (colon == std::string_view::npos || colon == 0 || f.raw[0] == ' ' || f.raw[0] == '\t') {
      out.malformed = true;
      f.value = f.raw;
    } else {
      std::string_view name = f.raw.substr(0, colon);
      while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
      f.name = name;
      f.value = f.raw.substr(colon + 1);
    }
    out.fields.push_back(f);
    pos = std::min(m.size(), end + 2);
  }
  out.body_offset = m.size();
  return out;
}

std::string remove_header_fields(std::string_view message,
                                 const std::vector<HeaderRemoval>& removals) {
  if (removals.empty()) return std::string(message);
  HeaderSection h = split_header(message);
  std::string out;
  out.reserve(message.size());
  std::size_t copied = 0;
  std::vector<std::pair<std::string_view, std::size_t>> seen;  // name -> count so far
  for (const auto& f : h.fields) {
    std::size_t n = 0;
    auto it = std::find_if(seen.begin(), seen.end(),
                           [&](const auto& s) { return field_name_is(s.first, f.name); });
    if (it == seen.end()) seen.emplace_back(f.name, 1);
    else n = it->second++;
    bool drop = !f.name.empty() &&
                std::any_of(removals.begin(), removals.end(), [&](const HeaderRemoval& r) {
                  return r.occurrence == n && field_name_is(f.name, r.name);
                });
    if (!drop) continue;
    out.append(message.substr(copied, f.offset - copied));
    copied = std::min(message.size(), f.offset + f.raw.size() + 2);  // with its CRLF
  }
  out.append(message.substr(copied));
  return out;
}

}  // namespace moat::policy
