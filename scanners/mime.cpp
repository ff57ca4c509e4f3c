#include "scanners/mime.hpp"

#include <gmime/gmime.h>
#include <magic.h>
#include <zip.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <mutex>
#include <unordered_set>

namespace moat::scanners {
namespace {

// GObject references: unref on scope exit.
struct GObjectUnref {
  void operator()(gpointer p) const {
    if (p) g_object_unref(p);
  }
};
template <class T>
using GPtr = std::unique_ptr<T, GObjectUnref>;

void init_gmime() {
  static std::once_flag once;
  std::call_once(once, [] { g_mime_init(); });
}

// libmagic handles are not thread-safe: one per thread, loaded on first use.
class Magic {
 public:
  Magic() : m_(magic_open(MAGIC_MIME_TYPE | MAGIC_ERROR)) {
    if (m_ && magic_load(m_, nullptr) != 0) {
      magic_close(m_);
      m_ = nullptr;
    }
  }
  ~Magic() {
    if (m_) magic_close(m_);
  }
  Magic(const Magic&) = delete;
  Magic& operator=(const Magic&) = delete;

  std::string type_of(std::string_view data, std::size_t max) {
    if (!m_ || data.empty()) return data.empty() ? "application/x-empty" : "";
    const char* t = magic_buffer(m_, data.data(), std::min(data.size(), max));
    return t ? t : "";
  }

 private:
  magic_t m_;
};

std::string true_type(std::string_view data, std::size_t max) {
  thread_local Magic magic;
  return magic.type_of(data, max);
}

std::string lower(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string issue_name(GMimeParserWarning code) {
  switch (code) {
    case GMIME_WARN_DUPLICATED_HEADER: return "mime.duplicate_header";
    case GMIME_WARN_DUPLICATED_PARAMETER: return "mime.duplicate_parameter";
    case GMIME_WARN_UNENCODED_8BIT_HEADER: return "mime.8bit_header";
    case GMIME_WARN_INVALID_CONTENT_TYPE: return "mime.bad_content_type";
    case GMIME_WARN_INVALID_RFC2047_HEADER_VALUE: return "mime.bad_encoded_word";
    case GMIME_WARN_INVALID_PARAMETER: return "mime.bad_parameter";
    case GMIME_WARN_MALFORMED_MULTIPART: return "mime.bad_boundary";
    case GMIME_WARN_TRUNCATED_MESSAGE: return "mime.truncated";
    case GMIME_WARN_MALFORMED_MESSAGE: return "mime.malformed";
    case GMIME_WARN_INVALID_ADDRESS_LIST: return "mime.bad_address";
    case GMIME_CRIT_INVALID_HEADER_NAME: return "mime.bad_header_name";
    case GMIME_CRIT_CONFLICTING_HEADER: return "mime.conflicting_header";
    case GMIME_CRIT_CONFLICTING_PARAMETER: return "mime.conflicting_parameter";
    case GMIME_CRIT_MULTIPART_WITHOUT_BOUNDARY: return "mime.bad_boundary";
    case GMIME_CRIT_NESTING_OVERFLOW: return "mime.too_deep";
    case GMIME_WARN_PART_WITHOUT_CONTENT: return "mime.empty_part";
    case GMIME_CRIT_PART_WITHOUT_HEADERS_OR_CONTENT: return "mime.empty_part";
  }
  return "mime.malformed";
}

class Walker {
 public:
  Walker(MimeMessage& out, const MimeLimits& limits) : out_(out), limits_(limits) {}

  void issue(std::string name, std::string detail) {
    // One issue per name and detail: a thousand identical warnings add nothing.
    if (seen_.insert(name + '\0' + detail).second && out_.issues.size() < 100)
      out_.issues.push_back({std::move(name), std::move(detail)});
  }

  void walk(GMimeObject* obj, const std::string& id, std::size_t depth) {
    if (!obj) return;
    if (depth > limits_.max_depth) {
      issue("mime.too_deep", "part " + id);
      return;
    }
    if (GMIME_IS_MULTIPART(obj)) {
      auto* mp = GMIME_MULTIPART(obj);
      int n = g_mime_multipart_get_count(mp);
      const char* boundary = g_mime_multipart_get_boundary(mp);
      if (!boundary || !*boundary) issue("mime.bad_boundary", "part " + id + ": no boundary");
      else if (n == 0) issue("mime.bad_boundary", "part " + id + ": boundary never found");
      for (int i = 0; i < n; ++i) {
        std::string child = id.empty() ? std::to_string(i + 1) : id + "." + std::to_string(i + 1);
        walk(g_mime_multipart_get_part(mp, i), child, depth + 1);
      }
      return;
    }
    if (GMIME_IS_MESSAGE_PART(obj)) {
      GMimeMessage* inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));
      if (inner) walk(g_mime_message_get_mime_part(inner), id.empty() ? "1" : id + ".1", depth + 1);
      return;
    }
    if (GMIME_IS_PART(obj)) leaf(GMIME_PART(obj), id.empty() ? "1" : id, depth);
  }

 private:
  void leaf(GMimePart* part, const std::string& id, std::size_t depth) {
    if (out_.parts.size() >= limits_.max_parts) {
      issue("mime.too_many_parts", fmt_count());
      return;
    }
    MimePart p;
    p.id = id;
    p.depth = depth;
    GMimeContentType* ct = g_mime_object_get_content_type(GMIME_OBJECT(part));
    if (ct) {
      const char* type = g_mime_content_type_get_media_type(ct);
      const char* sub = g_mime_content_type_get_media_subtype(ct);
      p.content_type = lower(std::string(type ? type : "text") + "/" + (sub ? sub : "plain"));
    }
    if (const char* fn = g_mime_part_get_filename(part)) p.filename = fn;
    p.attachment = g_mime_part_is_attachment(part) || !p.filename.empty();

    std::string body = decode(part);
    if (used_ + body.size() > limits_.max_decoded) {
      issue("mime.decoded_size_limit", "part " + id);
      body.resize(used_ < limits_.max_decoded ? limits_.max_decoded - used_ : 0);
    }
    used_ += body.size();
    p.true_type = true_type(body, limits_.magic_bytes);
    bool text = p.content_type.rfind("text/", 0) == 0 && !p.attachment;
    if (text) {
      const char* cs = ct ? g_mime_content_type_get_parameter(ct, "charset") : nullptr;
      p.text = to_utf8(std::move(body), cs ? cs : "us-ascii", id);
    } else {
      p.data = std::move(body);
      if (p.true_type == "application/zip" || p.data.rfind("PK\x03\x04", 0) == 0) list_zip(p);
    }
    out_.parts.push_back(std::move(p));
  }

  std::string fmt_count() { return "more than " + std::to_string(limits_.max_parts) + " parts"; }

  static std::string decode(GMimePart* part) {
    GMimeDataWrapper* content = g_mime_part_get_content(part);
    if (!content) return {};
    GPtr<GMimeStream> mem(g_mime_stream_mem_new());
    g_mime_data_wrapper_write_to_stream(content, mem.get());
    GByteArray* bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem.get()));
    return std::string(reinterpret_cast<const char*>(bytes->data), bytes->len);
  }

  std::string to_utf8(std::string body, std::string charset, const std::string& id) {
    charset = lower(charset);
    if (charset == "utf-8" || charset == "utf8" || charset == "us-ascii" || charset == "ascii") {
      if (g_utf8_validate(body.data(), static_cast<gssize>(body.size()), nullptr)) return body;
      if (charset.find("ascii") == std::string::npos)
        issue("mime.bad_charset", "part " + id + ": invalid UTF-8");
      charset = "windows-1252";  // the usual truth behind mislabelled 8-bit text
    }
    gsize written = 0;
    GError* err = nullptr;
    const char* iconv_name = g_mime_charset_iconv_name(charset.c_str());
    gchar* conv = g_convert_with_fallback(body.data(), static_cast<gssize>(body.size()), "UTF-8",
                                          iconv_name, "?", nullptr, &written, &err);
    if (!conv) {
      if (err) g_error_free(err);
      issue("mime.bad_charset", "part " + id + ": cannot convert from " + charset);
      gchar* valid = g_utf8_make_valid(body.data(), static_cast<gssize>(body.size()));
      std::string out(valid);
      g_free(valid);
      return out;
    }
    std::string out(conv, written);
    g_free(conv);
    return out;
  }

  void list_zip(MimePart& p) {
    zip_error_t zerr;
    zip_error_init(&zerr);
    zip_source_t* src = zip_source_buffer_create(p.data.data(), p.data.size(), 0, &zerr);
    if (!src) {
      zip_error_fini(&zerr);
      return;
    }
    zip_t* za = zip_open_from_source(src, ZIP_RDONLY, &zerr);
    if (!za) {
      zip_source_free(src);
      issue("mime.bad_archive", p.describe() + ": " + zip_error_strerror(&zerr));
      zip_error_fini(&zerr);
      return;
    }
    zip_error_fini(&zerr);
    zip_int64_t n = zip_get_num_entries(za, 0);
    if (n > static_cast<zip_int64_t>(limits_.max_zip_entries)) {
      issue("mime.archive_entry_limit", p.describe());
      n = static_cast<zip_int64_t>(limits_.max_zip_entries);
    }
    std::string head;
    for (zip_int64_t i = 0; i < n; ++i) {
      zip_stat_t st;
      zip_stat_init(&st);
      if (zip_stat_index(za, static_cast<zip_uint64_t>(i), 0, &st) != 0 || !st.name) continue;
      ZipEntry e;
      e.name = st.name;
      e.encrypted = (st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE;
      bool dir = !e.name.empty() && e.name.back() == '/';
      if (!e.encrypted && !dir) {
        // Only the head of each entry is inflated: enough for libmagic, and a zip bomb costs
        // no more than magic_bytes per entry.
        if (zip_file_t* f = zip_fopen_index(za, static_cast<zip_uint64_t>(i), 0)) {
          head.resize(std::min<std::size_t>(limits_.magic_bytes, 64 * 1024));
          zip_int64_t got = zip_fread(f, head.data(), head.size());
          zip_fclose(f);
          if (got > 0) e.true_type = true_type(std::string_view(head.data(), static_cast<std::size_t>(got)), head.size());
        }
      }
      p.zip_entries.push_back(std::move(e));
    }
    zip_discard(za);  // also frees src
  }

  MimeMessage& out_;
  const MimeLimits& limits_;
  std::size_t used_ = 0;
  std::unordered_set<std::string> seen_;
};

void on_warning(gint64 offset, GMimeParserWarning code, const gchar* item, gpointer user) {
  auto* w = static_cast<Walker*>(user);
  std::string detail = "offset " + std::to_string(offset);
  if (item && *item) {
    std::string it(item);
    if (it.size() > 80) it.resize(80);
    detail += ": " + it;
  }
  w->issue(issue_name(code), detail);
}

bool url_char(unsigned char c) {
  return c > 0x20 && c != 0x7f && c != '"' && c != '\'' && c != '<' && c != '>' && c != '`' &&
         c != '(' && c != ')' && c != '[' && c != ']' && c != '{' && c != '}' && c != '\\';
}

bool iequal_at(std::string_view s, std::size_t at, std::string_view word) {
  if (s.size() - at < word.size()) return false;
  for (std::size_t i = 0; i < word.size(); ++i) {
    char c = s[at + i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != word[i]) return false;
  }
  return true;
}

}  // namespace

std::string MimePart::describe() const {
  std::string d = "part " + id;
  if (!filename.empty()) d += " (" + filename + ")";
  return d;
}

std::vector<std::string_view> MimeMessage::header_values(std::string_view name) const {
  std::vector<std::string_view> out;
  for (const auto& h : headers)
    if (h.name.size() == name.size() && iequal_at(lower(h.name), 0, lower(std::string(name))))
      out.push_back(h.value);
  return out;
}

std::string html_to_text(std::string_view html) {
  std::string out;
  out.reserve(html.size());
  std::size_t i = 0;
  while (i < html.size()) {
    char c = html[i];
    if (c == '<') {
      for (std::string_view skip : {"script", "style"}) {
        if (iequal_at(html, i + 1, skip)) {
          std::string close = "</" + std::string(skip);
          std::size_t j = i + 1;
          while (j < html.size() && !iequal_at(html, j, close)) ++j;
          i = j;
          break;
        }
      }
      std::size_t end = html.find('>', i);
      if (end == std::string_view::npos) break;
      // Inline tags vanish ("pass<b>word</b>" reads "password"); block tags separate words.
      std::size_t n = i + 1 < html.size() && html[i + 1] == '/' ? i + 2 : i + 1;
      std::size_t name_end = n;
      while (name_end < end && std::isalnum(static_cast<unsigned char>(html[name_end]))) ++name_end;
      std::string name = lower(std::string(html.substr(n, name_end - n)));
      static const std::unordered_set<std::string> kInline = {
          "a", "b", "i", "u", "s", "em", "strong", "span", "font", "small", "big", "sub", "sup",
          "abbr", "code", "mark", "q", "wbr"};
      if (!kInline.count(name) && !out.empty() && out.back() != ' ') out += ' ';
      i = end + 1;
      continue;
    }
    if (c == '&') {
      static const std::pair<std::string_view, std::string_view> kEntities[] = {
          {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&#39;", "'"},
          {"&apos;", "'"}, {"&nbsp;", " "}, {"&#160;", " "}};
      bool done = false;
      for (auto [ent, rep] : kEntities)
        if (iequal_at(html, i, ent)) {
          out += rep;
          i += ent.size();
          done = true;
          break;
        }
      if (done) continue;
    }
    out += c;
    ++i;
  }
  return out;
}

std::vector<std::string> extract_urls(std::string_view text, std::size_t max) {
  std::vector<std::string> out;
  std::unordered_set<std::string> seen;
  std::size_t i = 0;
  while (i < text.size() && out.size() < max) {
    std::size_t start = std::string_view::npos;
    for (std::size_t j = i; j < text.size(); ++j) {
      char c = text[j];
      if ((c == 'h' || c == 'H') && (iequal_at(text, j, "http://") || iequal_at(text, j, "https://"))) {
        start = j;
        break;
      }
      if ((c == 'w' || c == 'W') && iequal_at(text, j, "www.") &&
          (j == 0 || !url_char(static_cast<unsigned char>(text[j - 1])) || text[j - 1] == '/' ||
           text[j - 1] == '=')) {
        start = j;
        break;
      }
    }
    if (start == std::string_view::npos) break;
    std::size_t end = start;
    while (end < text.size() && url_char(static_cast<unsigned char>(text[end]))) ++end;
    std::string url(text.substr(start, end - start));
    while (!url.empty() && (url.back() == '.' || url.back() == ',' || url.back() == ';')) url.pop_back();
    if (url.size() > 8 && seen.insert(url).second) out.push_back(url);
    i = end > start ? end : start + 1;
  }
  return out;
}

std::string url_host(std::string_view url) {
  auto scheme = url.find("://");
  std::string_view rest = scheme == std::string_view::npos ? url : url.substr(scheme + 3);
  auto end = rest.find_first_of("/?#");
  rest = rest.substr(0, end);
  if (auto at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
  if (!rest.empty() && rest.front() == '[') {
    auto close = rest.find(']');
    return lower(std::string(rest.substr(0, close == std::string_view::npos ? rest.size() : close + 1)));
  }
  if (auto colon = rest.find(':'); colon != std::string_view::npos) rest = rest.substr(0, colon);
  std::string host = lower(std::string(rest));
  while (!host.empty() && host.back() == '.') host.pop_back();
  return host;
}

MimeMessage parse_mime(std::string_view raw, const MimeLimits& limits) {
  init_gmime();
  MimeMessage out;
  Walker walker(out, limits);
  GPtr<GMimeStream> stream(g_mime_stream_mem_new_with_buffer(raw.data(), raw.size()));
  GPtr<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
  g_mime_parser_set_format(parser.get(), GMIME_FORMAT_MESSAGE);
  GMimeParserOptions* options = g_mime_parser_options_new();
  g_mime_parser_options_set_warning_callback(options, on_warning, &walker);
  GPtr<GMimeMessage> message(g_mime_parser_construct_message(parser.get(), options));
  g_mime_parser_options_free(options);
  if (!message) {
    walker.issue("mime.malformed", "no message could be parsed");
    return out;
  }
  if (GMimeHeaderList* list = g_mime_object_get_header_list(GMIME_OBJECT(message.get()))) {
    int n = g_mime_header_list_get_count(list);
    for (int i = 0; i < n; ++i) {
      GMimeHeader* h = g_mime_header_list_get_header_at(list, i);
      const char* name = g_mime_header_get_name(h);
      const char* value = g_mime_header_get_value(h);
      std::string v = value ? value : "";
      // GMime may leave invalid bytes in a header with unencoded 8-bit text.
      if (!g_utf8_validate(v.data(), static_cast<gssize>(v.size()), nullptr)) {
        gchar* valid = g_utf8_make_valid(v.data(), static_cast<gssize>(v.size()));
        v = valid;
        g_free(valid);
      }
      out.headers.push_back({name ? name : "", std::move(v)});
    }
  }
  // Headers that must appear once (RFC 5322 §3.6) but GMime only warns about exact repeats.
  for (std::string_view once : {"from", "subject", "to", "date", "message-id", "content-type"}) {
    if (out.header_values(once).size() > 1) walker.issue("mime.duplicate_header", std::string(once));
  }
  if (const char* s = g_mime_message_get_subject(message.get())) out.subject = s;
  if (InternetAddressList* from = g_mime_message_get_from(message.get());
      from && internet_address_list_length(from) > 0) {
    InternetAddress* a = internet_address_list_get_address(from, 0);
    if (const char* name = internet_address_get_name(a)) out.from_display = name;
    if (INTERNET_ADDRESS_IS_MAILBOX(a))
      if (const char* addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a)))
        out.from_address = addr;
  }
  walker.walk(g_mime_message_get_mime_part(message.get()), "", 0);
  for (const auto& p : out.parts) {
    if (p.text.empty()) continue;
    for (auto& u : extract_urls(p.text, 1000 - std::min<std::size_t>(1000, out.urls.size())))
      if (std::find(out.urls.begin(), out.urls.end(), u) == out.urls.end()) out.urls.push_back(std::move(u));
  }
  return out;
}

}  // namespace moat::scanners
