// Helpers for scanner tests: build small binary samples at test time instead of committing
// binaries (a minimal PE executable, a zip archive, base64).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moat::scanners::testing {

// 512 bytes with a DOS stub and a PE header: libmagic calls it a Windows executable.
std::string make_pe();

// A zip archive (stored, no compression) holding `entries` as (name, content).
std::string make_zip(const std::vector<std::pair<std::string, std::string>>& entries);

// Base64 with CRLF every 76 characters.
std::string base64(const std::string& data);

}  // namespace moat::scanners::testing
