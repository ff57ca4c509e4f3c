#include "plugins/sdk/plugin.hpp"

#include <doctest/doctest.h>

#include <stdexcept>

using namespace moat;
using namespace moat::plugin;

namespace {
const Info kInfo{"test", "2.0", {"x"}, {"data", "rcpt"}};

Result<Reply> reject_all(const Request& r) {
  Reply out;
  out.action = PluginAction::Reject;
  out.reply = "no: " + r.qid;
  return out;
}
}  // namespace

TEST_CASE("plugin sdk: answers hello, scans, and turns every failure into an error reply") {
  policy::MessageContext ctx;
  ctx.qid = "Q9";
  ctx.message = "Subject: x\r\n\r\nbody\r\n";
  auto request = scanners::encode_request(scanners::make_request(ctx, policy::Stage::EndOfData,
                                                                 "r1", false));
  SUBCASE("hello") {
    auto d = scanners::decode(answer(scanners::encode_hello_request("h1"), kInfo, reject_all));
    REQUIRE(d.ok());
    auto h = scanners::parse_hello(*d);
    REQUIRE(h.ok());
    CHECK(h->id == "h1");
    CHECK(h->name == "test");
    CHECK(h->stages == std::vector<std::string>{"data", "rcpt"});
  }
  SUBCASE("scan: the handler's result with the request's id") {
    auto d = scanners::decode(answer(request, kInfo, reject_all));
    REQUIRE(d.ok());
    auto r = scanners::parse_result(*d);
    REQUIRE(r.ok());
    CHECK(r->id == "r1");
    CHECK(r->action == PluginAction::Reject);
    CHECK(r->reply == "no: Q9");
  }
  struct Case {
    const char* what;
    std::vector<std::string> frames;
    Handler handler;
    std::string id;
  };
  Handler fails = [](const Request&) -> Result<Reply> { return Result<Reply>::fail("clamd down"); };
  Handler throws = [](const Request&) -> Result<Reply> { throw std::runtime_error("bug"); };
  const Case cases[] = {
      {"no frames", {}, reject_all, ""},
      {"wrong tag", {"MOAT/9", "type=scan\nid=1\n"}, reject_all, ""},
      {"bad header", {"MOAT/1", "garbage line\n"}, reject_all, ""},
      {"unknown type", {"MOAT/1", "type=dance\nid=5\n"}, reject_all, "5"},
      {"handler fails", request, fails, "r1"},
      {"handler throws", request, throws, "r1"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto d = scanners::decode(answer(c.frames, kInfo, c.handler));
    REQUIRE(d.ok());
    CHECK(d->type == "error");
    CHECK(d->id == c.id);
    CHECK_FALSE(d->fields.get("error").empty());
  }
}
