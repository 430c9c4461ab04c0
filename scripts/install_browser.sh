#!/usr/bin/env bash
# Install the headless browser the dashboard tests (tests/ui) drive: Debian's chromium and the
# matching chromedriver (same source package, so their versions always agree). Does nothing when
# both are present; exits non-zero (and the UI tests skip, saying why) where apt cannot install them.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_browser: not root and no passwordless sudo: cannot install chromium" >&2; exit 1; fi
fi
if ! command -v apt-get >/dev/null; then
  echo "install_browser: no apt-get on this system: install chromium and chromedriver by hand" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium && command -v chromedriver
