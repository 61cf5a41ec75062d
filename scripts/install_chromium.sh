#!/usr/bin/env bash
# The explorer's browser tests (tests/serve/test_browser.py) drive the system's Chromium through Playwright,
# which cannot download a browser of its own offline. Used by `make setup` (so `make test`) and by `.ci/run`:
# installs Debian's `chromium` where this user may (root, or password-less sudo) and it is missing; else says
# loudly which tests will be skipped and the one command that enables them. Never fails the set-up.
# PATCHSCOPES_NO_CHROMIUM_INSTALL=1 skips the install attempt (the tests still look for a browser).
set -uo pipefail

found() {
  if [ -n "${PATCHSCOPES_CHROMIUM:-}" ] && [ -x "${PATCHSCOPES_CHROMIUM}" ]; then
    echo "${PATCHSCOPES_CHROMIUM}"; return 0
  fi
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}

if path="$(found)"; then
  echo "browser tests: using $path"
  exit 0
fi

sudo=""
can_install=0
if [ "${PATCHSCOPES_NO_CHROMIUM_INSTALL:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    can_install=1
  elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    sudo="sudo -n"
    can_install=1
  fi
fi

if [ "$can_install" -eq 1 ]; then
  echo "browser tests: installing Debian's chromium (apt-get install -y chromium)..."
  if { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null; } \
      && path="$(found)"; then
    echo "browser tests: using $path"
    exit 0
  fi
fi

cat >&2 <<'MSG'
========================================================================================
 WARNING: no Chromium, so the explorer's browser tests (tests/serve/test_browser.py)
 will be SKIPPED. Enable them with:    sudo apt-get install -y chromium
 (or point PATCHSCOPES_CHROMIUM at a Chromium or Chrome binary), then run make test again.
========================================================================================
MSG
exit 0
