// The starter rule set in rules/ against its samples in rules/testdata/<rule_id>/: every
// match*.eml must make that rule fire, every nomatch*.eml must not; every rule has both.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "scanners/content_engine.hpp"
#include "scanners/mime.hpp"
#include "scanners/rule_file.hpp"

namespace moat::scanners {

TEST_CASE("starter rules: every rule fires on its match samples and not on its nomatch samples") {
  namespace fs = std::filesystem;
  fs::path root = fs::path(MOAT_SOURCE_DIR) / "rules";
  auto set = load_rule_dir(root.string(), RuleVariables::from_domains({"example.test"}));
  REQUIRE_MESSAGE(set.ok(), (set.ok() ? "" : set.error().message));
  std::set<std::string> ids;
  for (const auto& r : set->rules) ids.insert(r.id);
  auto compiled = CompiledRules::build(std::move(*set), {});
  REQUIRE_MESSAGE(compiled.ok(), (compiled.ok() ? "" : compiled.error().message));

  std::set<std::string> dirs;
  std::size_t samples = 0;
  for (const auto& dir : fs::directory_iterator(root / "testdata")) {
    if (!dir.is_directory()) continue;
    std::string id = dir.path().filename().string();
    CAPTURE(id);
    CHECK_MESSAGE(ids.count(id) == 1, "samples for a rule that does not exist");
    dirs.insert(id);
    int match = 0, nomatch = 0;
    for (const auto& file : fs::directory_iterator(dir.path())) {
      std::string name = file.path().filename().string();
      CAPTURE(name);
      bool want = name.rfind("match", 0) == 0;
      REQUIRE((want || name.rfind("nomatch", 0) == 0));
      (want ? match : nomatch)++;
      std::ifstream in(file.path(), std::ios::binary);
      std::stringstream buf;
      buf << in.rdbuf();
      std::string raw = buf.str();
      auto report = (*compiled)->scan(parse_mime(raw), raw);
      bool fired = false;
      std::string all;
      for (const auto& h : report.hits) {
        all += h.rule->id + " ";
        fired = fired || h.rule->id == id;
      }
      CAPTURE(all);
      CHECK(fired == want);
      ++samples;
    }
    CHECK(match >= 1);
    CHECK(nomatch >= 1);
  }
  for (const auto& id : ids) {
    CAPTURE(id);
    CHECK_MESSAGE(dirs.count(id) == 1, "rule without samples in rules/testdata/");
  }
  CHECK(samples >= 2 * ids.size());
}

}  // namespace moat::scanners
