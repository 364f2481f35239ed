#!/usr/bin/env bash
# The Debian packages the test suite drives as real processes: Chromium (the docs pages in a
# browser) and PgBouncer (reads through a transaction-mode pooler). Installs only what is missing,
# so `make test` does the whole set-up on a fresh machine and costs nothing afterwards.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "tools/system-deps.sh: install these Debian packages first: ${missing[*]}" >&2
  exit 1
fi
echo "--- installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts a system-wide pgbouncer on 6432; tests run their own.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now pgbouncer >/dev/null 2>&1 || true
else
  service pgbouncer stop >/dev/null 2>&1 || true
fi
