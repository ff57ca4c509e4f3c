#include "scanners/external/protocol.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdlib>

namespace moat::scanners {
namespace {

bool valid_key(std::string_view k) {
  if (k.empty() || k.size() > 64) return false;
  for (char c : k)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    auto end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::vector<std::string> frames_of(const Fields& f, std::string body = {}, bool with_body = false) {
  std::vector<std::string> out{std::string(kProtocolTag), encode_fields(f)};
  if (with_body) out.push_back(std::move(body));
  return out;
}

// strtod is locale-dependent; from_chars for double is in GCC 12's libstdc++.
std::optional<double> parse_score(std::string_view s) {
  double d = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
  if (ec != std::errc() || p != s.data() + s.size() || !std::isfinite(d)) return std::nullopt;
  return d;
}

}  // namespace

void Fields::add(std::string key, std::string value) {
  lines_.emplace_back(std::move(key), std::move(value));
}

std::string Fields::get(std::string_view key, std::string_view fallback) const {
  for (auto it = lines_.rbegin(); it != lines_.rend(); ++it)
    if (it->first == key) return it->second;
  return std::string(fallback);
}

bool Fields::has(std::string_view key) const {
  for (const auto& [k, v] : lines_)
    if (k == key) return true;
  return false;
}

std::vector<std::string> Fields::all(std::string_view key) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : lines_)
    if (k == key) out.push_back(v);
  return out;
}

Result<Fields> parse_fields(std::string_view frame) {
  if (frame.size() > kMaxHeaderFrame)
    return Result<Fields>::fail(fmt::format("header frame of {} bytes (limit {})", frame.size(),
                                            kMaxHeaderFrame));
  Fields f;
  std::size_t line_no = 0, start = 0;
  while (start < frame.size()) {
    auto end = frame.find('\n', start);
    if (end == std::string_view::npos) end = frame.size();
    std::string_view line = frame.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    if (f.lines().size() >= kMaxHeaderLines)
      return Result<Fields>::fail(fmt::format("more than {} header lines", kMaxHeaderLines));
    auto eq = line.find('=');
    if (eq == std::string_view::npos)
      return Result<Fields>::fail(fmt::format("header line {}: no '='", line_no));
    auto key = line.substr(0, eq);
    if (!valid_key(key))
      return Result<Fields>::fail(fmt::format("header line {}: bad key", line_no));
    f.add(std::string(key), std::string(line.substr(eq + 1)));
  }
  return f;
}

std::string encode_fields(const Fields& fields) {
  std::string out;
  for (const auto& [k, v] : fields.lines()) {
    out += k;
    out += '=';
    for (char c : v) out += (c == '\r' || c == '\n') ? ' ' : c;
    out += '\n';
  }
  return out;
}

Result<Decoded> decode(const std::vector<std::string>& frames) {
  if (frames.size() < 2)
    return Result<Decoded>::fail(fmt::format("{} frame(s), need at least 2", frames.size()));
  if (frames[0] != kProtocolTag)
    return Result<Decoded>::fail("unsupported version (protocol tag is not MOAT/1)");
  auto fields = parse_fields(frames[1]);
  if (!fields) return Result<Decoded>::fail(fields.error().message);
  Decoded d;
  d.fields = std::move(*fields);
  d.type = d.fields.get("type");
  d.id = d.fields.get("id");
  if (d.type.empty()) return Result<Decoded>::fail("missing 'type'");
  if (!d.fields.has("id")) return Result<Decoded>::fail("missing 'id'");
  if (frames.size() > 2) d.body = frames[2];
  return d;
}

ScanRequest make_request(const policy::MessageContext& ctx, policy::Stage stage, std::string id,
                         bool report_only) {
  ScanRequest r;
  r.type = report_only ? "event" : "scan";
  r.id = std::move(id);
  r.stage = std::string(policy::to_string(stage));
  r.session = ctx.session.sid;
  r.qid = ctx.qid;
  r.client_ip = ctx.session.client_ip.to_string();
  r.client_port = std::to_string(ctx.session.client_port);
  r.helo = ctx.session.helo;
  r.tls = ctx.session.tls;
  r.tls_version = ctx.session.tls_version;
  r.tls_cipher = ctx.session.tls_cipher;
  if (stage >= policy::Stage::MailFrom) r.sender = ctx.envelope.sender.address();
  for (const auto& rc : ctx.envelope.recipients) r.recipients.push_back(rc.address);
  if (stage == policy::Stage::RcptTo && ctx.current_rcpt &&
      (r.recipients.empty() || &ctx.envelope.recipients.back() != ctx.current_rcpt))
    r.recipients.push_back(ctx.current_rcpt->address);
  if (stage == policy::Stage::EndOfData) {
    r.size = ctx.message.size();
    r.message = ctx.message;
  }
  return r;
}

std::vector<std::string> encode_request(const ScanRequest& r) {
  Fields f;
  f.add("type", r.type);
  f.add("id", r.id);
  f.add("stage", r.stage);
  f.add("session", r.session);
  f.add("qid", r.qid);
  f.add("client_ip", r.client_ip);
  f.add("client_port", r.client_port);
  f.add("helo", r.helo);
  f.add("tls", r.tls ? "yes" : "no");
  if (r.tls) {
    f.add("tls_version", r.tls_version);
    f.add("tls_cipher", r.tls_cipher);
  }
  f.add("sender", r.sender);
  for (const auto& rc : r.recipients) f.add("rcpt", rc);
  bool data = r.stage == "data";
  if (data) f.add("size", std::to_string(r.message.size()));
  return frames_of(f, r.message, data);
}

Result<ScanRequest> parse_request(Decoded d) {
  if (d.type != "scan" && d.type != "event")
    return Result<ScanRequest>::fail(fmt::format("unexpected type '{}'", d.type));
  ScanRequest r;
  const auto& f = d.fields;
  r.type = d.type;
  r.id = d.id;
  r.stage = f.get("stage", "data");
  r.session = f.get("session");
  r.qid = f.get("qid");
  r.client_ip = f.get("client_ip");
  r.client_port = f.get("client_port");
  r.helo = f.get("helo");
  r.tls = f.get("tls") == "yes";
  r.tls_version = f.get("tls_version");
  r.tls_cipher = f.get("tls_cipher");
  r.sender = f.get("sender");
  r.recipients = f.all("rcpt");
  r.message = std::move(d.body);
  r.size = r.message.size();
  return r;
}

std::vector<std::string> encode_result(const ScanResult& r) {
  Fields f;
  f.add("type", "result");
  f.add("id", r.id);
  switch (r.action) {
    case PluginAction::None: break;
    case PluginAction::Reject: f.add("action", "reject"); break;
    case PluginAction::TempFail: f.add("action", "tempfail"); break;
    case PluginAction::Quarantine: f.add("action", "quarantine"); break;
    case PluginAction::Discard: f.add("action", "discard"); break;
  }
  if (!r.reply.empty()) f.add("reply", r.reply);
  for (const auto& fi : r.findings)
    f.add("finding", fmt::format("{} {} {}", fi.name, fi.score, fi.detail));
  for (const auto& [n, v] : r.headers) f.add("header", n + ": " + v);
  return frames_of(f);
}

Result<ScanResult> parse_result(const Decoded& d) {
  if (d.type == "error")
    return Result<ScanResult>::fail("plugin error: " +
                                    sanitize_reply_text(d.fields.get("error", "(no text)")));
  if (d.type != "result")
    return Result<ScanResult>::fail(fmt::format("unexpected type '{}'",
                                                sanitize_reply_text(d.type)));
  ScanResult r;
  r.id = d.id;
  std::string action = d.fields.get("action", "none");
  if (action == "none" || action.empty()) r.action = PluginAction::None;
  else if (action == "reject") r.action = PluginAction::Reject;
  else if (action == "tempfail") r.action = PluginAction::TempFail;
  else if (action == "quarantine") r.action = PluginAction::Quarantine;
  else if (action == "discard") r.action = PluginAction::Discard;
  else return Result<ScanResult>::fail("unknown action '" + sanitize_reply_text(action) + "'");
  r.reply = sanitize_reply_text(d.fields.get("reply"));
  for (const auto& line : d.fields.all("finding")) {
    auto sp1 = line.find(' ');
    std::string_view lv = line;
    auto name = normalize_finding_name(lv.substr(0, sp1));
    if (name.empty() || sp1 == std::string::npos)
      return Result<ScanResult>::fail("finding without a name and score");
    auto sp2 = line.find(' ', sp1 + 1);
    auto score = parse_score(lv.substr(sp1 + 1, sp2 == std::string::npos ? std::string::npos
                                                                           : sp2 - sp1 - 1));
    if (!score) return Result<ScanResult>::fail("finding '" + name + "' without a numeric score");
    std::string detail = sp2 == std::string::npos ? "" : sanitize_reply_text(lv.substr(sp2 + 1));
    r.findings.push_back({name, *score, detail});
  }
  for (const auto& line : d.fields.all("header")) {
    auto colon = line.find(':');
    std::string name = line.substr(0, colon);
    std::string value;
    if (colon != std::string::npos) {
      value = line.substr(colon + 1);
      auto first = value.find_first_not_of(" \t");
      value = first == std::string::npos ? "" : value.substr(first);
    }
    if (colon == std::string::npos || !valid_header_field(name, value)) {
      r.dropped.push_back("invalid header field '" + sanitize_reply_text(name) + "'");
    } else if (r.headers.size() >= kMaxAddHeaders) {
      r.dropped.push_back(fmt::format("more than {} header fields", kMaxAddHeaders));
    } else {
      r.headers.emplace_back(std::move(name), std::move(value));
    }
  }
  return r;
}

std::vector<std::string> encode_hello_request(const std::string& id) {
  Fields f;
  f.add("type", "hello");
  f.add("id", id);
  return frames_of(f);
}

std::vector<std::string> encode_hello(const Hello& h) {
  Fields f;
  f.add("type", "hello");
  f.add("id", h.id);
  f.add("name", h.name);
  f.add("version", h.version);
  f.add("capabilities", join(h.capabilities));
  f.add("stages", join(h.stages));
  return frames_of(f);
}

Result<Hello> parse_hello(const Decoded& d) {
  if (d.type != "hello") return Result<Hello>::fail("not a hello");
  Hello h;
  h.id = d.id;
  h.name = d.fields.get("name");
  h.version = d.fields.get("version");
  h.capabilities = split_commas(d.fields.get("capabilities"));
  h.stages = split_commas(d.fields.get("stages"));
  if (h.name.empty()) return Result<Hello>::fail("hello without a name");
  return h;
}

std::vector<std::string> encode_error(const std::string& id, const std::string& message) {
  Fields f;
  f.add("type", "error");
  f.add("id", id);
  f.add("error", message);
  return frames_of(f);
}

bool valid_header_field(std::string_view name, std::string_view value) {
  if (name.empty() || name.size() > 76) return false;
  for (char c : name)
    if (c < 33 || c > 126 || c == ':') return false;
  if (value.size() > 900) return false;
  for (char c : value)
    if (!(c == '\t' || (c >= 32 && c <= 126))) return false;
  return true;
}

std::string sanitize_reply_text(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, kMaxReplyText)) out += (c >= 32 && c <= 126) ? c : '?';
  return out;
}

std::string normalize_finding_name(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, 100)) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
              c == '_';
    if (c == '.' && (out.empty() || out.back() == '.')) continue;  // no empty parts
    out += ok ? c : '_';
  }
  while (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}

}  // namespace moat::scanners
