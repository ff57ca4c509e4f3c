#include "scanners/external/protocol.hpp"

#include <doctest/doctest.h>

#include <random>

using namespace moat;
using namespace moat::scanners;

namespace {
std::vector<std::string> frames(std::string header, std::string body = {}, bool with_body = false) {
  std::vector<std::string> f{"MOAT/1", std::move(header)};
  if (with_body) f.push_back(std::move(body));
  return f;
}
}  // namespace

TEST_CASE("protocol: header frames parse or fail with a reason") {
  struct Case {
    std::string frame;
    bool ok;
    std::size_t lines;
  };
  const Case cases[] = {
      {"", true, 0},
      {"type=scan\nid=1\n", true, 2},
      {"type=scan\r\nid=1\r\n", true, 2},    // CRLF tolerated
      {"\n\ntype=scan\n\n", true, 1},          // empty lines ignored
      {"a=b=c\n", true, 1},                    // split at the first '='
      {"a=\n", true, 1},                       // empty value
      {"noequals\n", false, 0},
      {"=value\n", false, 0},                  // empty key
      {"Type=scan\n", false, 0},               // upper case key
      {"ty pe=scan\n", false, 0},
      {std::string("k\0y=1", 5), false, 0},
  };
  for (const auto& c : cases) {
    CAPTURE(c.frame);
    auto r = parse_fields(c.frame);
    CHECK(r.ok() == c.ok);
    if (r.ok()) CHECK(r->lines().size() == c.lines);
  }
  auto r = parse_fields("a=b=c\n");
  CHECK(r->get("a") == "b=c");
  CHECK(parse_fields(std::string(kMaxHeaderFrame + 1, 'a')).ok() == false);
  std::string many;
  for (std::size_t i = 0; i <= kMaxHeaderLines; ++i) many += "k=v\n";
  CHECK(parse_fields(many).ok() == false);
}

TEST_CASE("protocol: encoded values never start a new line") {
  Fields f;
  f.add("helo", "evil\r\ntype=result");
  f.add("x", "1");
  auto back = parse_fields(encode_fields(f));
  REQUIRE(back.ok());
  CHECK(back->lines().size() == 2);
  CHECK(back->get("helo") == "evil  type=result");
  CHECK(back->get("type").empty());
}

TEST_CASE("protocol: decode checks the tag, type and id") {
  struct Case {
    std::vector<std::string> frames;
    bool ok;
  };
  const Case cases[] = {
      {{}, false},
      {{"MOAT/1"}, false},
      {{"MOAT/2", "type=result\nid=1\n"}, false},
      {{"", "type=result\nid=1\n"}, false},
      {{"MOAT/1", "id=1\n"}, false},
      {{"MOAT/1", "type=result\n"}, false},
      {{"MOAT/1", "type=result\nid=\n"}, true},
      {{"MOAT/1", "type=result\nid=7\nfuture_key=whatever\n"}, true},
      {{"MOAT/1", "type=result\nid=7\n", "body", "extra frame"}, true},
  };
  for (const auto& c : cases) {
    CAPTURE(c.frames.size());
    CHECK(decode(c.frames).ok() == c.ok);
  }
}

TEST_CASE("protocol: a request round-trips with its envelope facts and message") {
  policy::MessageContext ctx;
  ctx.session.sid = "S1";
  ctx.session.client_ip = *policy::IpAddress::parse("192.0.2.7");
  ctx.session.client_port = 4000;
  ctx.session.helo = "mx.example.org";
  ctx.session.tls = true;
  ctx.session.tls_version = "TLSv1.3";
  ctx.qid = "Q1";
  ctx.envelope.recipients.push_back({{}, "a@example.test", "", ""});
  ctx.envelope.recipients.push_back({{}, "b@example.test", "", ""});
  ctx.message = "Subject: x\r\n\r\nbody\r\n";
  auto req = make_request(ctx, policy::Stage::EndOfData, "42", false);
  auto fr = encode_request(req);
  REQUIRE(fr.size() == 3);
  auto d = decode(fr);
  REQUIRE(d.ok());
  auto back = parse_request(std::move(*d));
  REQUIRE(back.ok());
  CHECK(back->type == "scan");
  CHECK(back->id == "42");
  CHECK(back->stage == "data");
  CHECK(back->session == "S1");
  CHECK(back->qid == "Q1");
  CHECK(back->client_ip == "192.0.2.7");
  CHECK(back->client_port == "4000");
  CHECK(back->helo == "mx.example.org");
  CHECK(back->tls);
  CHECK(back->tls_version == "TLSv1.3");
  CHECK(back->recipients == std::vector<std::string>{"a@example.test", "b@example.test"});
  CHECK(back->message == ctx.message);
  CHECK(back->size == ctx.message.size());

  auto early = encode_request(make_request(ctx, policy::Stage::Helo, "43", true));
  CHECK(early.size() == 2);  // no message frame before data
  auto e = parse_request(*decode(early));
  REQUIRE(e.ok());
  CHECK(e->type == "event");
  CHECK(e->stage == "helo");
}

TEST_CASE("protocol: results parse, with invalid parts refused or dropped") {
  struct Case {
    std::string header;
    bool ok;
    PluginAction action;
    std::size_t findings;
    std::size_t headers;
  };
  const Case cases[] = {
      {"type=result\nid=1\n", true, PluginAction::None, 0, 0},
      {"type=result\nid=1\naction=reject\nreply=Virus\n", true, PluginAction::Reject, 0, 0},
      {"type=result\nid=1\naction=tempfail\n", true, PluginAction::TempFail, 0, 0},
      {"type=result\nid=1\naction=quarantine\n", true, PluginAction::Quarantine, 0, 0},
      {"type=result\nid=1\naction=discard\n", true, PluginAction::Discard, 0, 0},
      {"type=result\nid=1\naction=none\n", true, PluginAction::None, 0, 0},
      {"type=result\nid=1\naction=explode\n", false, PluginAction::None, 0, 0},
      {"type=result\nid=1\nfinding=av.eicar 20 Eicar-Test\n", true, PluginAction::None, 1, 0},
      {"type=result\nid=1\nfinding=av.eicar 2.5\n", true, PluginAction::None, 1, 0},
      {"type=result\nid=1\nfinding=av.eicar -1 x\n", true, PluginAction::None, 1, 0},
      {"type=result\nid=1\nfinding=av.eicar\n", false, PluginAction::None, 0, 0},
      {"type=result\nid=1\nfinding=av.eicar high x\n", false, PluginAction::None, 0, 0},
      {"type=result\nid=1\nfinding=av.eicar nan x\n", false, PluginAction::None, 0, 0},
      {"type=result\nid=1\nfinding= 1 x\n", false, PluginAction::None, 0, 0},
      {"type=result\nid=1\nheader=X-Scanned: yes\n", true, PluginAction::None, 0, 1},
      {"type=result\nid=1\nheader=X-Scanned yes\n", true, PluginAction::None, 0, 0},
      {"type=result\nid=1\nheader=X Bad: yes\n", true, PluginAction::None, 0, 0},
      {"type=result\nid=1\nheader=: yes\n", true, PluginAction::None, 0, 0},
      {"type=result\nid=1\nheader=X-A: caf\xc3\xa9\n", true, PluginAction::None, 0, 0},
      {"type=error\nid=1\nerror=boom\n", false, PluginAction::None, 0, 0},
      {"type=hello\nid=1\n", false, PluginAction::None, 0, 0},
  };
  for (const auto& c : cases) {
    CAPTURE(c.header);
    auto d = decode(frames(c.header));
    REQUIRE(d.ok());
    auto r = parse_result(*d);
    CHECK(r.ok() == c.ok);
    if (!r.ok()) continue;
    CHECK(r->action == c.action);
    CHECK(r->findings.size() == c.findings);
    CHECK(r->headers.size() == c.headers);
  }
  std::string lots = "type=result\nid=1\n";
  for (int i = 0; i < 40; ++i) lots += "header=X-N: v\n";
  auto r = parse_result(*decode(frames(lots)));
  REQUIRE(r.ok());
  CHECK(r->headers.size() == kMaxAddHeaders);
  CHECK(!r->dropped.empty());
}

TEST_CASE("protocol: a result round-trips") {
  ScanResult in;
  in.id = "9";
  in.action = PluginAction::Reject;
  in.reply = "Virus found: Eicar-Test-Signature";
  in.findings = {{"av.eicar-test-signature", 20, "Eicar-Test-Signature"}};
  in.headers = {{"X-Virus-Scanned", "moat-clamav"}};
  auto d = decode(encode_result(in));
  REQUIRE(d.ok());
  auto out = parse_result(*d);
  REQUIRE(out.ok());
  CHECK(out->id == "9");
  CHECK(out->action == PluginAction::Reject);
  CHECK(out->reply == in.reply);
  REQUIRE(out->findings.size() == 1);
  CHECK(out->findings[0].name == "av.eicar-test-signature");
  CHECK(out->findings[0].score == 20);
  CHECK(out->findings[0].detail == "Eicar-Test-Signature");
  CHECK(out->headers == in.headers);
}

TEST_CASE("protocol: hello and error round-trip") {
  auto d = decode(encode_hello({"5", "clamav", "1.0", {"av"}, {"data", "rcpt"}}));
  REQUIRE(d.ok());
  auto h = parse_hello(*d);
  REQUIRE(h.ok());
  CHECK(h->name == "clamav");
  CHECK(h->stages == std::vector<std::string>{"data", "rcpt"});
  auto e = decode(encode_error("5", "bad\nthing"));
  REQUIRE(e.ok());
  CHECK(e->type == "error");
  CHECK(e->fields.get("error") == "bad thing");
  CHECK(parse_result(*e).ok() == false);
}

TEST_CASE("protocol: validation helpers") {
  struct H {
    std::string name, value;
    bool ok;
  };
  const H hs[] = {{"X-Virus", "clean", true},      {"X-Virus", "a\tb", true},
                  {"X-Virus", "a\r\nBcc: x", false}, {"X Virus", "v", false},
                  {"X:Virus", "v", false},           {"", "v", false},
                  {std::string(77, 'X'), "v", false}, {"X-V", std::string(901, 'a'), false}};
  for (const auto& h : hs) {
    CAPTURE(h.name);
    CHECK(valid_header_field(h.name, h.value) == h.ok);
  }
  CHECK(sanitize_reply_text("a\r\nb") == "a??b");
  CHECK(sanitize_reply_text(std::string(500, 'x')).size() == kMaxReplyText);
  CHECK(normalize_finding_name("Av.Eicar-Test-Signature") == "av.eicar-test-signature");
  CHECK(normalize_finding_name("..a..b c.") == "a.b_c");
  CHECK(normalize_finding_name("Win.Trojan/X!") == "win.trojan_x_");
}

TEST_CASE("protocol: random frames never crash the decoder") {
  std::mt19937 rng(7);
  const std::string alphabet = "type=resultid\n\r =:actionrejectfindingheader0123456789.-X\x01\xff";
  for (int i = 0; i < 3000; ++i) {
    std::vector<std::string> f;
    std::size_t n = rng() % 5;
    for (std::size_t j = 0; j < n; ++j) {
      std::string s = (j == 0 && rng() % 2) ? "MOAT/1" : "";
      std::size_t len = rng() % 120;
      for (std::size_t k = 0; k < len; ++k) s += alphabet[rng() % alphabet.size()];
      if (j == 1 && rng() % 2) s = "type=result\nid=1\n" + s;
      f.push_back(s);
    }
    auto d = decode(f);
    if (d.ok()) {
      (void)parse_result(*d);
      (void)parse_hello(*d);
      (void)parse_request(*d);
    }
  }
  CHECK(true);
}
