// moat-filetype: a scanner plugin that finds the true type of every MIME part (libmagic, by
// content, not by the declared Content-Type or file name), lists archives (libarchive: zip, tar,
// 7z, ...) one level deep and types their members too, and applies a small policy by type.
//
// Policy file, one rule a line ('#' comments):   ACTION  MIME-TYPE-PATTERN  [SCORE]
//   ACTION  reject | quarantine | score
//   PATTERN a MIME type, or "type/*"
//   SCORE   for "score" (default 1)
// The first matching rule counts. Every typed part gives a finding filetype.<action> with the
// type and name as detail when a rule matched.
//
// usage: moat-filetype --endpoint ENDPOINT --policy FILE
#include <archive.h>
#include <archive_entry.h>
#include <gmime/gmime.h>
#include <magic.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "plugins/sdk/plugin.hpp"

namespace {

using moat::Result;
using moat::plugin::PluginAction;
using moat::plugin::Reply;
using moat::plugin::Request;

struct Rule {
  std::string action;  // reject | quarantine | score
  std::string pattern;
  double score = 1;
};

Result<std::vector<Rule>> load_policy(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Result<std::vector<Rule>>::fail(path + ": cannot open");
  std::vector<Rule> rules;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    Rule r;
    if (!(words >> r.action)) continue;
    if (!(words >> r.pattern) ||
        (r.action != "reject" && r.action != "quarantine" && r.action != "score"))
      return Result<std::vector<Rule>>::fail(path + ":" + std::to_string(n) +
                                             ": expected ACTION TYPE [SCORE]");
    if (std::string s; words >> s) {
      try {
        r.score = std::stod(s);
      } catch (...) {
        return Result<std::vector<Rule>>::fail(path + ":" + std::to_string(n) + ": bad score");
      }
    }
    rules.push_back(r);
  }
  return rules;
}

bool matches(const std::string& pattern, const std::string& type) {
  if (pattern.size() > 2 && pattern.compare(pattern.size() - 2, 2, "/*") == 0)
    return type.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0;
  return pattern == type;
}

struct Item {
  std::string name;  // "report.zip" or "report.zip/invoice.txt"
  std::string type;
};

class Typer {
 public:
  Typer() : cookie_(magic_open(MAGIC_MIME_TYPE | MAGIC_ERROR)) {
    if (cookie_ && magic_load(cookie_, nullptr) != 0) {
      magic_close(cookie_);
      cookie_ = nullptr;
    }
  }
  ~Typer() {
    if (cookie_) magic_close(cookie_);
  }
  bool ok() const { return cookie_ != nullptr; }
  std::string type(const std::string& data) {
    const char* t = magic_buffer(cookie_, data.data(), data.size());
    return t ? t : "application/octet-stream";
  }

 private:
  magic_t cookie_;
};

// Members of an archive held in `data` (one level), each typed by its first 64 KiB.
void list_archive(Typer& typer, const std::string& outer, const std::string& data,
                  std::vector<Item>& out) {
  std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
  archive_read_support_format_all(a.get());
  archive_read_support_filter_all(a.get());
  if (archive_read_open_memory(a.get(), data.data(), data.size()) != ARCHIVE_OK) return;
  archive_entry* entry = nullptr;
  for (int n = 0; n < 1000 && archive_read_next_header(a.get(), &entry) == ARCHIVE_OK; ++n) {
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    std::string head(64 * 1024, '\0');
    auto got = archive_read_data(a.get(), head.data(), head.size());
    head.resize(got > 0 ? static_cast<std::size_t>(got) : 0);
    const char* name = archive_entry_pathname(entry);
    out.push_back({outer + "/" + (name ? name : "?"), typer.type(head)});
  }
}

bool is_archive(const std::string& type) {
  return type == "application/zip" || type == "application/x-tar" ||
         type == "application/x-7z-compressed" || type == "application/gzip" ||
         type == "application/x-rar" || type == "application/vnd.rar";
}

struct Walk {
  Typer* typer;
  std::vector<Item>* items;
};

void on_part(GMimeObject*, GMimeObject* part, gpointer user) {
  auto* w = static_cast<Walk*>(user);
  if (!GMIME_IS_PART(part) || GMIME_IS_MULTIPART(part)) return;
  GMimeDataWrapper* content = g_mime_part_get_content(GMIME_PART(part));
  if (!content) return;
  GMimeStream* mem = g_mime_stream_mem_new();
  g_mime_data_wrapper_write_to_stream(content, mem);
  GByteArray* bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
  std::string data(reinterpret_cast<const char*>(bytes->data), bytes->len);
  g_object_unref(mem);
  const char* fname = g_mime_part_get_filename(GMIME_PART(part));
  std::string name = fname ? fname : "(body)";
  std::string type = w->typer->type(data);
  w->items->push_back({name, type});
  if (is_archive(type)) list_archive(*w->typer, name, data, *w->items);
}

std::vector<Item> type_parts(Typer& typer, const std::string& message) {
  std::vector<Item> items;
  GMimeStream* stream = g_mime_stream_mem_new_with_buffer(message.data(), message.size());
  GMimeParser* parser = g_mime_parser_new_with_stream(stream);
  GMimeMessage* msg = g_mime_parser_construct_message(parser, nullptr);
  if (msg) {
    Walk w{&typer, &items};
    g_mime_message_foreach(msg, on_part, &w);
    g_object_unref(msg);
  }
  g_object_unref(parser);
  g_object_unref(stream);
  return items;
}

}  // namespace

int main(int argc, char** argv) {
  using moat::plugin::option;
  std::string endpoint = option(argc, argv, "--endpoint", "");
  auto rules = load_policy(option(argc, argv, "--policy", "/etc/moat/filetype.policy"));
  if (endpoint.empty() || !rules) {
    std::fprintf(stderr, "%s\nusage: moat-filetype --endpoint ENDPOINT --policy FILE\n",
                 rules ? "" : rules.error().message.c_str());
    return 2;
  }
  g_mime_init();
  Typer typer;
  if (!typer.ok()) {
    std::fprintf(stderr, "moat-filetype: cannot load the libmagic database\n");
    return 1;
  }
  auto handler = [&](const Request& req) -> Result<Reply> {
    Reply out;
    if (req.stage != "data") return out;
    for (const auto& item : type_parts(typer, req.message)) {
      for (const auto& rule : *rules) {
        if (!matches(rule.pattern, item.type)) continue;
        std::string detail = item.type + " " + moat::scanners::sanitize_reply_text(item.name);
        out.findings.push_back({"filetype." + rule.action, rule.action == "score" ? rule.score : 0,
                                detail});
        if (rule.action == "reject" && out.action != PluginAction::Reject) {
          out.action = PluginAction::Reject;
          out.reply = "Attachment type not allowed: " + detail;
        } else if (rule.action == "quarantine" && out.action == PluginAction::None) {
          out.action = PluginAction::Quarantine;
        }
        break;
      }
    }
    return out;
  };
  return moat::plugin::serve(endpoint, {"filetype", "1.0", {"libmagic", "archives"}, {"data"}},
                             handler);
}
