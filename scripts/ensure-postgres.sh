#!/usr/bin/env bash
# Makes sure PostgreSQL 15 server binaries are installed (Debian packages); the tests start their
# own private cluster on loopback with them (tests/pg.py). Does nothing when they are present.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "PostgreSQL server binaries are missing; install the 'postgresql' Debian package" >&2
  exit 1
fi
echo "installing PostgreSQL from Debian packages..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
