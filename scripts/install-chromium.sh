#!/usr/bin/env bash
# install-chromium.sh - make sure a headless Chromium is at $CHROMIUM (default
# /usr/bin/chromium) for the dashboard's browser test (tests/browser/), installing Debian's
# `chromium` package when it is missing. The test drives it with puppeteer-core, which
# never downloads a browser of its own.
#
# Runs apt-get as root, or through sudo where that works without a password; otherwise it
# fails saying what to install.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
say() { echo "install-chromium: $*" >&2; }

if [ -x "$CHROMIUM" ]; then
  exit 0
fi

if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
  as_root=(sudo -n)
else
  say "$CHROMIUM is missing and this user cannot install packages (not root, no sudo without a" \
    "password): install Debian's chromium package (apt-get install chromium), or set CHROMIUM to" \
    "a Chromium or Chrome binary"
  exit 1
fi

command -v apt-get > /dev/null || {
  say "$CHROMIUM is missing and there is no apt-get here: install Chromium, or set CHROMIUM to its binary"
  exit 1
}
say "$CHROMIUM is missing: installing Debian's chromium package"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium > /dev/null
[ -x "$CHROMIUM" ] || { say "apt-get installed chromium, but $CHROMIUM is still missing"; exit 1; }
say "installed: $("$CHROMIUM" --version 2> /dev/null || echo "$CHROMIUM")"
