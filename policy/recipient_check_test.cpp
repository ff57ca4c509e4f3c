// Tests for policy/recipient_check: valid-recipients file, per-domain entries, reload on change.
#include "policy/recipient_check.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace moat::policy {
namespace {

struct TempFile {
  std::string path;
  TempFile() {
    char tmpl[] = "/tmp/moat-rcpts-XXXXXX";
    int fd = mkstemp(tmpl);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = tmpl;
  }
  ~TempFile() { ::unlink(path.c_str()); }
  // Writes and moves the modification time forward so that a reload sees the change.
  void write(const std::string& text, long mtime) {
    std::ofstream(path, std::ios::trunc) << text;
    struct timespec times[2] = {{mtime, 0}, {mtime, 0}};
    REQUIRE(utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
  }
};

RelayCheck relay() {
  RelayConfig c;
  c.domains = {"example.test", "whole.test"};
  return RelayCheck(c);
}

TEST_CASE("recipients: listed addresses and whole domains pass, others get 550 5.1.1") {
  TempFile f;
  f.write("# valid recipients\nUser@Example.test\n  alias@example.test  # trailing comment\n"
          "@whole.test\n\n",
          1000);
  RecipientCheck check(f.path, relay());
  CHECK(check.size() == 3);
  struct Row {
    const char* address;
    bool valid;
  };
  for (Row row : {Row{"user@example.test", true}, Row{"USER@EXAMPLE.TEST", true},
                  Row{"user@example.test.", true}, Row{"alias@example.test", true},
                  Row{"anyone@whole.test", true}, Row{"nobody@example.test", false},
                  Row{"user@sub.example.test", true},  // not a relay domain: not ours to judge
                  Row{"someone@elsewhere.example", true}}) {
    CAPTURE(row.address);
    Verdict v = check.decide(row.address);
    if (row.valid) {
      CHECK(v.action == Action::Continue);
    } else {
      CHECK(v.action == Action::Reject);
      CHECK(v.reply.code == 550);
      CHECK(v.reply.enhanced == "5.1.1");
    }
  }
}

TEST_CASE("recipients: the file is re-read when it changes, and kept when it vanishes") {
  TempFile f;
  f.write("old@example.test\n", 1000);
  RecipientCheck check(f.path, relay());
  CHECK(check.decide("old@example.test").action == Action::Continue);
  f.write("new@example.test\n", 2000);
  sleep(1);  // changes are looked for at most once a second
  CHECK(check.decide("new@example.test").action == Action::Continue);
  CHECK(check.decide("old@example.test").action == Action::Reject);
  ::unlink(f.path.c_str());
  sleep(1);
  CHECK(check.decide("new@example.test").action == Action::Continue);
}

}  // namespace
}  // namespace moat::policy
