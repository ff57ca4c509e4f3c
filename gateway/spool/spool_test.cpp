// Tests for gateway/spool: the envelope text format and the durable spool (state = directory,
// commit = rename into active/, recovery never deletes what it cannot read).
#include "gateway/spool/spool.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/spool/envelope.hpp"

namespace moat::gateway {
namespace {

namespace fs = std::filesystem;
using namespace std::string_view_literals;

constexpr std::string_view kCrockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

// A fresh spool directory under /tmp, removed again at the end of the test.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/moat-spool-test-XXXXXX";
    const char* p = mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

bool valid_qid_shape(std::string_view q) {
  return q.size() == 14 &&
         std::all_of(q.begin(), q.end(), [](char c) { return kCrockford.find(c) != std::string_view::npos; });
}

SpoolEnvelope minimal_envelope(std::string qid) {
  SpoolEnvelope e;
  e.qid = std::move(qid);
  e.recipients.push_back({"user@example.test", "", "", SpoolRecipient::State::Pending, ""});
  return e;
}

// Creates, writes and commits one message into `state`; returns its qid.
std::string queue_message(Spool& spool, std::string_view body, std::string_view state = "active") {
  std::string qid = spool.new_qid();
  auto file = spool.create(qid);
  REQUIRE(file.ok());
  (*file)->write(body);
  REQUIRE(spool.commit(**file, minimal_envelope(qid), state).ok());
  return qid;
}

SpoolEnvelope full_envelope(std::string qid) {
  SpoolEnvelope e;
  e.qid = std::move(qid);
  e.arrival = 1700000000;
  e.client_ip = "2001:db8::1";
  e.helo = "client with spaces %41 and\ttab";
  e.protocol = "UTF8SMTPS";
  e.tls = "TLSv1.3 TLS_AES_256_GCM_SHA384";
  e.sender = "\"odd sender\"@example.org";
  e.body = "8BITMIME";
  e.smtputf8 = true;
  e.ret = "HDRS";
  e.envid = "QQ+2B314159%";
  e.recipients = {{"j\xC3\xBCrgen@example.test", "SUCCESS,FAILURE",
                   "rfc822;j+C3+BCrgen@example.test", SpoolRecipient::State::Delivered,
                   "250 2.0.0 Ok: queued as 4Xyz"},
                  {"\"a b\"@example.test", "", "", SpoolRecipient::State::Failed,
                   "550 5.1.1 <a b>: no such user"},
                  {"100%@example.test", "NEVER", "", SpoolRecipient::State::Pending,
                   "451 4.3.0 try later"},
                  {"plain@example.test", "", "", SpoolRecipient::State::Pending, ""}};
  e.attempts = 3;
  e.next_attempt = 1700003600;
  e.last_error = "connect to 127.0.0.1:10025: Connection refused";
  e.message_size = 12345;
  e.add_headers = {{"X-Moat-Score", "3.5 (rule.a, rule.b)"},
                   {"Authentication-Results", "mx.example.test;\r\n\tspf=pass"},
                   {"X-Empty", ""}};
  e.remove_headers = {{"Authentication-Results", 0}, {"Authentication-Results", 3}};
  return e;
}

TEST_CASE("envelope: serialize and parse round trip") {
  SpoolEnvelope with_empty_fields = minimal_envelope("0123456789ABCD");
  with_empty_fields.sender = "";  // the null sender
  with_empty_fields.helo = "";
  with_empty_fields.client_ip = "";
  with_empty_fields.recipients.push_back({"", "", "", SpoolRecipient::State::Pending, ""});
  SpoolEnvelope negative_time = minimal_envelope("0123456789ABCE");
  negative_time.arrival = -1;
  SpoolEnvelope control_chars = minimal_envelope("0123456789ABCF");
  control_chars.helo = std::string("a\0b\x7f\n\r %%25 end", 15);
  control_chars.add_headers = {{"X-A", "line1\nline2"}, {"", ""}};
  control_chars.remove_headers = {{"X-B\r\nY", 7}, {"", 0}};

  const SpoolEnvelope rows[] = {minimal_envelope("0123456789ABCD"),
                                full_envelope("0123456789ABCD"), with_empty_fields, negative_time,
                                control_chars};
  for (const auto& env : rows) {
    std::string text = serialize(env);
    CAPTURE(text);
    // One record per line: nothing in a value may break the structure.
    CHECK(text.back() == '\n');
    auto parsed = parse_envelope(text);
    REQUIRE_MESSAGE(parsed.ok(), (parsed.ok() ? "" : parsed.error().message));
    CHECK(*parsed == env);
    // And it is stable: serializing the parsed envelope gives the same text.
    CHECK(serialize(*parsed) == text);
  }
}

TEST_CASE("envelope: corrupt text is refused") {
  const std::string good = serialize(minimal_envelope("0123456789ABCD"));
  REQUIRE(parse_envelope(good).ok());
  const std::string first_line = "moat-envelope 1\n";
  REQUIRE(good.rfind(first_line, 0) == 0);
  const std::string body = good.substr(first_line.size());

  // clang-format off
  const std::string rows[] = {
    "",
    "\n",
    body,                                                   // no magic line
    "moat-envelope 2\n" + body,                             // unknown version
    "MOAT-ENVELOPE 1\n" + body,
    good.substr(0, good.size() - 1),                        // truncated: last line unterminated
    first_line + "qid 0123456789ABCD\n",                    // no recipients
    first_line + "rcpt user@example.test  \n",              // no qid
    good + "frobnicate 1\n",                                // unknown key
    good + "\n",                                            // empty line
    good + "qid\n",                                         // missing value
    good + "qid a b\n",                                     // extra field
    good + "rcpt a b\n",                                    // rcpt needs three fields
    good + "rcpt a b c d\n",
    good + "header a\n",                                    // header needs two
    good + "helo bad%escape\n",
    good + "helo bad%4\n",
    good + "helo bad%\n",
    good + "helo %ZZ\n",
    good + "helo %+1\n",
    good + "arrival 12x\n",
    good + "arrival \n",
    good + "arrival 99999999999999999999\n",
  };
  // clang-format on
  for (const auto& text : rows) {
    CAPTURE(text);
    auto r = parse_envelope(text);
    CHECK_FALSE(r.ok());
    if (!r.ok()) CHECK_FALSE(r.error().message.empty());
  }
}

TEST_CASE("spool: open creates every state directory") {
  TempDir tmp;
  const std::string dir = tmp.path + "/spool/nested";
  auto spool = Spool::open(dir);
  REQUIRE_MESSAGE(spool.ok(), (spool.ok() ? "" : spool.error().message));
  for (auto state : kSpoolStates) {
    CAPTURE(state);
    CHECK(fs::is_directory(dir + "/" + std::string(state)));
  }
  // Opening again is fine.
  CHECK(Spool::open(dir).ok());
}

TEST_CASE("spool: create, write, commit puts the message in active/, byte-exact") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  Spool& spool = **opened;

  // Messages that could confuse the file format: empty, binary, ones that contain the envelope
  // magic and a trailer of their own, and one larger than the 64 KiB write buffer.
  std::string big;
  for (int i = 0; big.size() < 300000; ++i) big += "line " + std::to_string(i) + "\r\n";
  const std::string rows[] = {
      "",
      "Received: from x\r\n\r\nhello\r\n",
      std::string("bin\0ary\xff\r\n", 10),
      "moat-envelope 1\nqid 00000000000000\nrcpt a  \nmoat-trailer 00000000000000000000\n",
      big,
  };
  for (const auto& message : rows) {
    CAPTURE(message.size());
    std::string qid = spool.new_qid();
    auto file = spool.create(qid);
    REQUIRE_MESSAGE(file.ok(), (file.ok() ? "" : file.error().message));
    CHECK((*file)->qid() == qid);
    CHECK(fs::exists(tmp.path + "/incoming/" + qid));
    // Written in uneven pieces, including ones bigger than the buffer.
    for (std::size_t pos = 0, step = 1; pos < message.size(); pos += step, step = step * 3 + 7)
      (*file)->write(std::string_view(message).substr(pos, step));
    CHECK((*file)->error() == 0);
    SpoolEnvelope env = full_envelope(qid);
    auto done = spool.commit(**file, env);
    REQUIRE_MESSAGE(done.ok(), (done.ok() ? "" : done.error().message));
    file->reset();  // a committed file survives its SpoolFile

    CHECK_FALSE(fs::exists(tmp.path + "/incoming/" + qid));
    REQUIRE(fs::exists(tmp.path + "/active/" + qid));
    // The queue file starts with the message bytes, unchanged.
    CHECK(slurp(tmp.path + "/active/" + qid).substr(0, message.size()) == message);
    auto back = spool.read("active", qid);
    REQUIRE_MESSAGE(back.ok(), (back.ok() ? "" : back.error().message));
    CHECK(back->message == message);
    // commit() records where the message ends; everything else comes back as given.
    SpoolEnvelope want = env;
    want.message_size = message.size();
    CHECK(back->envelope == want);
    auto listed = spool.list("active");
    CHECK(std::find(listed.begin(), listed.end(), qid) != listed.end());
  }
  CHECK(entries(tmp.path + "/incoming").empty());
  CHECK(spool.list("active").size() == std::size(rows));
}

TEST_CASE("spool: commit into another state") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  Spool& spool = **opened;
  std::string qid = queue_message(spool, "quarantined\r\n", "quarantine");
  CHECK(fs::exists(tmp.path + "/quarantine/" + qid));
  CHECK_FALSE(fs::exists(tmp.path + "/active/" + qid));
  auto back = spool.read("quarantine", qid);
  REQUIRE(back.ok());
  CHECK(back->message == "quarantined\r\n");
}

TEST_CASE("spool: an uncommitted file is removed when dropped") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  Spool& spool = **opened;
  std::string qid = spool.new_qid();
  {
    auto file = spool.create(qid);
    REQUIRE(file.ok());
    (*file)->write(std::string(100000, 'x'));  // some of it already on disk
    CHECK(fs::exists(tmp.path + "/incoming/" + qid));
  }
  CHECK_FALSE(fs::exists(tmp.path + "/incoming/" + qid));
  for (auto state : kSpoolStates) {
    CAPTURE(state);
    CHECK(entries(tmp.path + "/" + std::string(state)).empty());
  }
  // The same qid cannot be created twice while a file holds it.
  auto a = spool.create(qid);
  REQUIRE(a.ok());
  auto b = spool.create(qid);
  CHECK_FALSE(b.ok());
}

TEST_CASE("spool: queue ids are unique and strictly increasing") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  Spool& spool = **opened;
  std::string prev;
  int bad_shape = 0, not_increasing = 0;
  for (int i = 0; i < 10000; ++i) {
    std::string q = spool.new_qid();
    if (!valid_qid_shape(q)) ++bad_shape;
    if (!prev.empty() && !(prev < q)) ++not_increasing;  // lexicographic, as `ls` sorts them
    prev = q;
  }
  CHECK(bad_shape == 0);
  CHECK(not_increasing == 0);
  // The qid orders by time: one taken later in another Spool sorts after these.
  usleep(50000);  // qids may run ahead of the clock by 1 µs per call above
  auto other = Spool::open(tmp.path);
  REQUIRE(other.ok());
  CHECK(prev < (*other)->new_qid());
}

TEST_CASE("spool: recover removes incoming leftovers and moves unreadable files to corrupt/") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  Spool& spool = **opened;

  // A good queued message.
  std::string good = queue_message(spool, "good message\r\n");
  // A good deferred message.
  std::string deferred = queue_message(spool, "deferred message\r\n", "deferred");
  // Leftovers of sessions that never got their 250 (crash during DATA).
  const std::string left1 = spool.new_qid(), left2 = spool.new_qid();
  spit(tmp.path + "/incoming/" + left1, "half a mess");
  spit(tmp.path + "/incoming/" + left2, "");
  // Garbage under valid queue-id names.
  const std::string garbage = "0000000000000Z";
  const std::string garbage_bytes = "this is not a queue file\n";
  spit(tmp.path + "/active/" + garbage, garbage_bytes);
  const std::string truncated = "0000000000001A";
  std::string whole = slurp(tmp.path + "/active/" + good);
  spit(tmp.path + "/active/" + truncated, whole.substr(0, whole.size() - 5));
  // A readable file whose envelope names another qid: not this file's envelope.
  const std::string mismatch = "0000000000002B";
  spit(tmp.path + "/deferred/" + mismatch, whole);
  // Files without queue-id names are not the spool's to touch.
  spit(tmp.path + "/active/README", "operator note");

  auto r = spool.recover();
  CHECK(r.queued == 2);
  CHECK(r.incomplete == 2);
  CHECK(r.corrupt == 3);

  CHECK(entries(tmp.path + "/incoming").empty());
  CHECK(entries(tmp.path + "/active") == std::vector<std::string>{good, "README"});
  CHECK(entries(tmp.path + "/deferred") == std::vector<std::string>{deferred});
  // Moved aside, never deleted, and unchanged.
  auto corrupt = entries(tmp.path + "/corrupt");
  std::vector<std::string> want_corrupt = {garbage, truncated, mismatch};
  std::sort(want_corrupt.begin(), want_corrupt.end());
  CHECK(corrupt == want_corrupt);
  CHECK(slurp(tmp.path + "/corrupt/" + garbage) == garbage_bytes);
  CHECK(slurp(tmp.path + "/corrupt/" + mismatch) == whole);
  // The good messages still read back.
  auto back = spool.read("active", good);
  REQUIRE(back.ok());
  CHECK(back->message == "good message\r\n");

  // Recovery is idempotent.
  auto again = spool.recover();
  CHECK(again.queued == 2);
  CHECK(again.incomplete == 0);
  CHECK(again.corrupt == 0);
}

TEST_CASE("spool: recover never replaces a file already in corrupt/") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  const std::string qid = "0000000000003C";
  spit(tmp.path + "/corrupt/" + qid, "first");
  spit(tmp.path + "/active/" + qid, "second");
  CHECK((*opened)->recover().corrupt == 1);
  CHECK(slurp(tmp.path + "/corrupt/" + qid) == "first");
  CHECK(slurp(tmp.path + "/corrupt/" + qid + ".1") == "second");
}

TEST_CASE("spool: a full disk fails the commit with 4.3.1, never a success") {
  // /dev/full answers every write with ENOSPC, as a full spool file system would.
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  SpoolFile file(fd, tmp.path + "/incoming/0000000000004D", "0000000000004D");
  file.write(std::string(200000, 'x'));  // larger than the write buffer: reaches the fd
  CHECK(file.error() == ENOSPC);
  auto done = (*opened)->commit(file, minimal_envelope("0000000000004D"));
  REQUIRE_FALSE(done.ok());
  CHECK(done.error().message.rfind("4.3.1", 0) == 0);
  CHECK(entries(tmp.path + "/active").empty());
}

TEST_CASE("spool: update appends a newer envelope; a torn update loses nothing") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  Spool& spool = **opened;
  const std::string body = "Subject: x\r\n\r\nmoat-trailer 00000000000000000000\n in the body\r\n";
  std::string qid = queue_message(spool, body);
  auto first = spool.read("active", qid);
  REQUIRE(first.ok());
  CHECK(first->envelope.message_size == body.size());

  SpoolEnvelope next = first->envelope;
  next.attempts = 1;
  next.next_attempt = 1700000600;
  next.recipients[0].diagnostic = "451 4.4.1 no answer";
  REQUIRE(spool.update("active", next, "deferred").ok());
  CHECK(entries(tmp.path + "/active").empty());
  auto second = spool.read("deferred", qid);
  REQUIRE(second.ok());
  CHECK(second->envelope == next);
  CHECK(second->message == body);

  // A crash in the middle of the next update leaves half an envelope at the end.
  std::string path = tmp.path + "/deferred/" + qid;
  std::string whole = slurp(path);
  SpoolEnvelope third = next;
  third.attempts = 2;
  spit(path, whole + serialize(third).substr(0, 40) + "moat-trailer 0000");
  auto after_crash = spool.read("deferred", qid);
  REQUIRE(after_crash.ok());
  CHECK(after_crash->envelope == next);
  CHECK(after_crash->message == body);
  // Recovery cuts the torn tail off, and later updates work again.
  CHECK(spool.recover().queued == 1);
  CHECK(slurp(path) == whole);
  REQUIRE(spool.update("deferred", third, "deferred").ok());
  CHECK(spool.read("deferred", qid)->envelope == third);
  REQUIRE(spool.remove("deferred", qid).ok());
  CHECK(entries(tmp.path + "/deferred").empty());
}

TEST_CASE("spool: read refuses names that are not queue ids") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  Spool& spool = **opened;
  spit(tmp.path + "/secret", "x");
  for (std::string_view qid : {""sv, "../secret"sv, "0123456789abcd"sv, "0123456789ABC"sv,
                               "0123456789ABCDE"sv, "0123456789ABCI"sv, "0123456789ABC/"sv,
                               "0123456789ABC\0"sv}) {
    CAPTURE(qid);
    CHECK_FALSE(spool.read("active", qid).ok());
  }
  CHECK_FALSE(spool.read("active", "0123456789ABCD").ok());  // valid name, no such file
}

}  // namespace
TEST_CASE("spool: concurrent commits (group-committed directory fsync) all land") {
  TempDir tmp;
  auto opened = Spool::open(tmp.path);
  REQUIRE(opened.ok());
  Spool& spool = **opened;
  constexpr int kThreads = 8, kEach = 25;
  std::vector<std::vector<std::unique_ptr<SpoolFile>>> files(kThreads);
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kEach; ++i) {
      auto f = spool.create(spool.new_qid());
      REQUIRE(f.ok());
      (*f)->write("Subject: x\r\n\r\nbody\r\n");
      files[t].push_back(std::move(*f));
    }
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (auto& f : files[t])
        if (spool.commit(*f, minimal_envelope(f->qid()))) ++ok;
    });
  for (auto& th : threads) th.join();
  CHECK(ok == kThreads * kEach);
  CHECK(spool.list("active").size() == static_cast<std::size_t>(kThreads * kEach));
  CHECK(spool.list("incoming").empty());
}

}  // namespace moat::gateway
