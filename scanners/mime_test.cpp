#include "scanners/mime.hpp"

#include <doctest/doctest.h>

#include <algorithm>

#include "scanners/test_samples.hpp"

namespace moat::scanners {
namespace {

bool has_issue(const MimeMessage& m, std::string_view name) {
  return std::any_of(m.issues.begin(), m.issues.end(), [&](const MimeIssue& i) { return i.name == name; });
}

std::string issues_of(const MimeMessage& m) {
  std::string s;
  for (const auto& i : m.issues) s += i.name + "(" + i.detail + ") ";
  return s;
}

}  // namespace

TEST_CASE("mime: encoded words, display name and a quoted-printable Latin-1 body") {
  std::string raw =
      "From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.test>\r\n"
      "To: a@example.test\r\n"
      "Subject: =?UTF-8?B?w5xiZXJ3ZWlzdW5n?= pending\r\n"
      " (folded)\r\n"
      "MIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=iso-8859-1\r\n"
      "Content-Transfer-Encoding: quoted-printable\r\n"
      "\r\n"
      "Gr=FC=DFe, bitte =\r\nhier klicken: https://Login.Example.test/x?y=1.\r\n";
  auto m = parse_mime(raw);
  CAPTURE(issues_of(m));
  CHECK(m.from_display == "Jörg Müller");
  CHECK(m.from_address == "joerg@example.test");
  CHECK(m.subject == "Überweisung pending (folded)");
  REQUIRE(m.parts.size() == 1);
  CHECK(m.parts[0].id == "1");
  CHECK(m.parts[0].content_type == "text/plain");
  CHECK(m.parts[0].text == "Grüße, bitte hier klicken: https://Login.Example.test/x?y=1.\r\n");
  REQUIRE(m.urls.size() == 1);
  CHECK(m.urls[0] == "https://Login.Example.test/x?y=1");
  auto subjects = m.header_values("SUBJECT");
  REQUIRE(subjects.size() == 1);
  CHECK(subjects[0] == "Überweisung pending (folded)");
  CHECK(m.issues.empty());
}

TEST_CASE("mime: nested multiparts, RFC 2231 names and a zip holding an executable") {
  std::string zip = testing::make_zip({{"readme.txt", "hello"}, {"invoice.exe", testing::make_pe()}});
  std::string raw =
      "From: a@example.test\r\nTo: b@example.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
      "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
      "preamble\r\n"
      "--outer\r\n"
      "Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
      "--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain text\r\n"
      "--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html <b>text</b></p>\r\n"
      "--inner--\r\n"
      "--outer\r\n"
      "Content-Type: application/pdf\r\n"
      "Content-Disposition: attachment;\r\n"
      " filename*0*=UTF-8''r%C3%A9sum;\r\n"
      " filename*1*=%C3%A9.pdf\r\n"
      "Content-Transfer-Encoding: base64\r\n\r\n" +
      testing::base64("%PDF-1.4\n%fake\n") +
      "\r\n--outer\r\n"
      "Content-Type: application/octet-stream; name=\"docs.zip\"\r\n"
      "Content-Disposition: attachment\r\n"
      "Content-Transfer-Encoding: base64\r\n\r\n" +
      testing::base64(zip) + "\r\n--outer--\r\n";
  auto m = parse_mime(raw);
  CAPTURE(issues_of(m));
  REQUIRE(m.parts.size() == 4);
  CHECK(m.parts[0].id == "1.1");
  CHECK(m.parts[0].text == "plain text");
  CHECK(m.parts[1].id == "1.2");
  CHECK(m.parts[1].is_html());
  CHECK(m.parts[1].depth == 2);
  CHECK(m.parts[2].id == "2");
  CHECK(m.parts[2].filename == "résumé.pdf");
  CHECK(m.parts[2].attachment);
  CHECK(m.parts[2].true_type == "application/pdf");
  CHECK(m.parts[2].data.rfind("%PDF-1.4", 0) == 0);
  CHECK(m.parts[3].filename == "docs.zip");
  CHECK(m.parts[3].true_type == "application/zip");
  CHECK(m.parts[3].describe() == "part 3 (docs.zip)");
  REQUIRE(m.parts[3].zip_entries.size() == 2);
  CHECK(m.parts[3].zip_entries[0].name == "readme.txt");
  CHECK(m.parts[3].zip_entries[1].name == "invoice.exe");
  CHECK(m.parts[3].zip_entries[1].true_type == "application/vnd.microsoft.portable-executable");
  CHECK(m.issues.empty());
}

TEST_CASE("mime: malformed structure becomes issues, never a failure") {
  struct Row {
    const char* what;
    std::string raw;
    const char* issue;
  };
  std::string hdr = "From: a@example.test\r\nTo: b@example.test\r\nMIME-Version: 1.0\r\n";
  Row rows[] = {
      {"boundary never used", hdr + "Subject: x\r\nContent-Type: multipart/mixed; boundary=\"abc\"\r\n\r\n"
                                    "--xyz\r\nContent-Type: text/plain\r\n\r\nhi\r\n--xyz--\r\n",
       "mime.bad_boundary"},
      {"multipart without boundary", hdr + "Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nhi\r\n",
       "mime.bad_boundary"},
      {"two subjects", hdr + "Subject: one\r\nSubject: two\r\n\r\nbody\r\n", "mime.duplicate_header"},
      {"bad encoded word", hdr + "Subject: =?utf-8?q?broken\r\n\r\nbody\r\n", ""},
      {"invalid UTF-8 in a utf-8 part",
       hdr + "Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbad \xff\xfe bytes\r\n",
       "mime.bad_charset"},
      {"unknown charset", hdr + "Subject: x\r\nContent-Type: text/plain; charset=x-nonexistent-42\r\n\r\nbody\r\n",
       "mime.bad_charset"},
      {"corrupt zip", hdr + "Subject: x\r\nContent-Type: application/zip; name=a.zip\r\n\r\nPK\x03\x04garbage\r\n",
       "mime.bad_archive"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.what);
    auto m = parse_mime(row.raw);
    CAPTURE(issues_of(m));
    if (*row.issue) CHECK(has_issue(m, row.issue));
  }
}

TEST_CASE("mime: limits on depth, part count and decoded size") {
  // 40 nested multiparts: the walk stops at max_depth with an issue.
  std::string raw = "From: a@example.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n";
  for (int i = 0; i < 40; ++i)
    raw += "Content-Type: multipart/mixed; boundary=\"b" + std::to_string(i) + "\"\r\n\r\n--b" +
           std::to_string(i) + "\r\n";
  raw += "Content-Type: text/plain\r\n\r\ndeep text\r\n";
  for (int i = 39; i >= 0; --i) raw += "--b" + std::to_string(i) + "--\r\n";
  auto deep = parse_mime(raw);
  CAPTURE(issues_of(deep));
  CHECK(has_issue(deep, "mime.too_deep"));
  CHECK(deep.parts.empty());

  std::string many = "From: a@example.test\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
                     "Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n";
  for (int i = 0; i < 50; ++i) many += "--m\r\nContent-Type: text/plain\r\n\r\npart " + std::to_string(i) + "\r\n";
  many += "--m--\r\n";
  MimeLimits limits;
  limits.max_parts = 10;
  limits.max_decoded = 30;
  auto m = parse_mime(many, limits);
  CHECK(m.parts.size() == 10);
  CHECK(has_issue(m, "mime.too_many_parts"));
  CHECK(has_issue(m, "mime.decoded_size_limit"));
  std::size_t total = 0;
  for (const auto& p : m.parts) total += p.text.size() + p.data.size();
  CHECK(total <= 30);
}

TEST_CASE("mime: arbitrary bytes never crash the parser") {
  std::string junk;
  std::uint32_t x = 12345;
  for (int round = 0; round < 50; ++round) {
    junk.clear();
    for (int i = 0; i < 2000; ++i) {
      x = x * 1103515245 + 12345;
      static const char kAlphabet[] = "ab-\r\n:; =?\"\\<>boundary--Content-Type:multipart/";
      junk += kAlphabet[(x >> 16) % (sizeof kAlphabet - 1)];
    }
    auto m = parse_mime(junk);
    CHECK(m.parts.size() <= MimeLimits{}.max_parts);
  }
  auto empty = parse_mime("");
  CHECK(empty.parts.size() <= 1);
}

TEST_CASE("mime: URL extraction, hosts and HTML text") {
  struct Row {
    const char* text;
    std::vector<std::string> urls;
  };
  Row rows[] = {
      {"see https://a.example/x and http://b.example.", {"https://a.example/x", "http://b.example"}},
      {"<a href=\"https://c.example/login?u=1\">here</a>", {"https://c.example/login?u=1"}},
      {"visit www.d.example/path, now", {"www.d.example/path"}},
      {"no links at all", {}},
      {"dup https://e.example/ https://e.example/", {"https://e.example/"}},
  };
  for (const auto& row : rows) {
    CAPTURE(row.text);
    CHECK(extract_urls(row.text) == row.urls);
  }
  struct HostRow {
    const char* url;
    const char* host;
  };
  HostRow hosts[] = {
      {"https://Login.Example.test:443/x", "login.example.test"},
      {"http://user:pw@evil.example/a", "evil.example"},
      {"www.d.example/path", "www.d.example"},
      {"https://[2001:db8::1]/x", "[2001:db8::1]"},
      {"https://trailing.example./", "trailing.example"},
  };
  for (const auto& row : hosts) {
    CAPTURE(row.url);
    CHECK(url_host(row.url) == row.host);
  }
  CHECK(html_to_text("pass<b>word</b><br>next") == "password next");
  CHECK(html_to_text("<p>Hello&nbsp;<b>World</b> &amp; co</p><script>var x='<p>hidden';</script>end") ==
        "Hello World & co end");
}

}  // namespace moat::scanners
