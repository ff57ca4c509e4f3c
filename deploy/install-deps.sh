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
# Sender authentication (auth/): DKIM verification (libopendkim) and DMARC's organisational
# domain (libpsl + Debian's Public Suffix List data in /usr/share/publicsuffix, which libpsl5
# only recommends).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
  libopendkim-dev libpsl-dev publicsuffix
# Shared rate-limit/greylist state: hiredis to speak RESP; redis-server only for the tests,
# which run private instances on free loopback ports (the system service is not needed).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
  libhiredis-dev redis-server
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
# Content rules (scanners/): Hyperscan (needs SSSE3; checked at start with hs_valid_platform),
# GMime 3 for MIME, libmagic for true file types (+ its database in libmagic-mgc), libzip for
# zip listings.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
  libhyperscan-dev libgmime-3.0-dev libmagic-dev libmagic-mgc libzip-dev

# --- scanner plugins (ZeroMQ, plugins/) ---
# clamd and freshclam must not run system-wide nor download signatures: services are kept from
# starting during the install (policy-rc.d) and disabled after it; tests run a private clamd
# with a signature database they write.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
  libzmq3-dev cppzmq-dev python3-zmq libmagic-dev libarchive-dev libgmime-3.0-dev
if ! dpkg -s clamav-daemon >/dev/null 2>&1; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    clamav-daemon clamav || { $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now clamav-daemon.service clamav-freshclam.service \
    clamav-daemon.socket >/dev/null 2>&1 || true
fi
# --- end scanner plugins ---
