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

# ---------------------------------------------------------------------------------------------
# Python virtual environment for the Django Channels tests and examples/django: .venv/ with the
# exact pins of tests/python/requirements.txt. Reinstalled only when that file changes.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
req="$root/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "install-test-deps: .venv up to date"
else
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "install-test-deps: installing python3-venv with apt-get"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  fi
  echo "install-test-deps: creating .venv from tests/python/requirements.txt"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
fi
"$venv/bin/python" -c 'import django, channels, channels_redis, msgpack; print("install-test-deps: django", django.__version__, "channels", channels.__version__)'
