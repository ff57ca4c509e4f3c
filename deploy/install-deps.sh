#!/bin/sh
# Installs everything Moat needs to build, run and test on Debian 12 (bookworm).
# --no-install-recommends keeps libasio-dev from pulling ~160 MB of Boost.
set -eu
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
# postfix is only a test backend (tests/integration/backend.py runs private instances and
# smtp-sink): preseeded to "No configuration", its install asks nothing and leaves no system
# mail service configured (nothing listens on port 25).
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
  build-essential g++ cmake ninja-build pkg-config ca-certificates \
  libasio-dev libssl-dev openssl libtoml11-dev libspdlog-dev libfmt-dev \
  doctest-dev \
  python3 swaks libnet-ssleay-perl postfix
# Content rules (scanners/): Hyperscan (needs SSSE3; checked at start with hs_valid_platform),
# GMime 3 for MIME, libmagic for true file types (+ its database in libmagic-mgc), libzip for
# zip listings.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
  libhyperscan-dev libgmime-3.0-dev libmagic-dev libmagic-mgc libzip-dev
