#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine: installs what the tests need,
# then the whole cargo workspace (unit, mocked-API, cross-component and — with KUBECONFIG —
# cluster e2e tests).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
# No incremental caches unless asked for: a one-off full run gains nothing from them, and they
# take disk a fresh CI machine may not have (see [profile.dev] in Cargo.toml).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --workspace --locked --all-targets
# Python publisher (clients/python): pytest against real redis-server processes and the sidecar
# binary. Any non-zero exit fails the run, including 5 ("no tests collected").
(cd clients/python && ../../.venv/bin/python -m pytest -q)
# Browser client (clients/js): node's test runner against the real sidecar and redis-server.
# Node 20 gets --experimental-websocket from test/run.mjs; no test files is a failure there too.
(cd clients/js && node test/run.mjs)
# Helm chart, examples, CRD copy and RBAC table (helm lint/template, Kubernetes 1.29 + newest schemas).
./scripts/check-chart.sh
