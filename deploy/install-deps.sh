#!/bin/sh
# Installs everything Moat needs to build, run and test on Debian 12 (bookworm).
# --no-install-recommends keeps libasio-dev from pulling ~160 MB of Boost.
set -eu
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
  build-essential g++ cmake ninja-build pkg-config ca-certificates \
  libasio-dev libssl-dev openssl libtoml11-dev libspdlog-dev libfmt-dev \
  doctest-dev \
  python3 swaks libnet-ssleay-perl
