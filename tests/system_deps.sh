#!/usr/bin/env bash
# System packages the tests need beyond pip: headless Chromium, which renders the debug HTML report in
# tests/debug/test_html_report.py. Installs it with apt-get (sudo when not root) only if it is missing.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "headless Chromium is missing and there is no apt-get: install chromium with your package manager" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
echo "installing chromium (headless browser for the HTML report test; about 2 minutes)" >&2
$apt_get update -qq && DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq chromium >/dev/null
