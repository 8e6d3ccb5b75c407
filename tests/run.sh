#!/usr/bin/env bash
# Install everything the suite needs on a fresh machine, then run the whole suite.
# README's second set-up command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v nginx >/dev/null; then
  # The page test drives a real headless browser (Debian's chromium + chromedriver); the
  # slow-client test runs the kiosk's front, Debian's nginx.
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver nginx >/dev/null
fi
python -m pip install -q -r requirements-train.txt
python -m ruff check server export training bench tests
python -m pytest "$@"
