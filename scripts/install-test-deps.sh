#!/usr/bin/env bash
# Installs the system packages the tests need on a fresh Debian machine (idempotent).
# Tests spawn their own redis-server on free ports; nothing is started here.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Headless browser for the local-mode demo test (tests/tests/demo_browser.rs).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  echo "install-test-deps: installing ${need[*]} with apt-get"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian package starts a system redis on 6379; tests do not use it (they spawn their own).
redis-server --version
