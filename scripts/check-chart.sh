#!/usr/bin/env bash
# Chart, examples and CRD checks (scripts/check_chart.py): helm lint --strict, helm template of
# every values variation validated against the Kubernetes 1.29 and newest schemas, examples
# against the CRD schema and through `taskstream-operator render`, the chart's CRD == crds/, and
# the chart's RBAC == operator/rbac.yaml; and scripts/test_check_chart.py, the check's own
# strictness. Needs ./scripts/install-test-deps.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in .tools/bin/helm .venv-chart/bin/python; do
  [ -x "$tool" ] || { echo "check-chart: $tool missing: run ./scripts/install-test-deps.sh" >&2; exit 1; }
done
cargo build --locked -q -p taskstream-operator
export TASKSTREAM_OPERATOR="${CARGO_TARGET_DIR:-target}/debug/taskstream-operator"
export HELM="$PWD/.tools/bin/helm"
# The check's own strictness first: a known-bad example must fail it.
.venv-chart/bin/python -m unittest -q scripts/test_check_chart.py
# Helm warns on stderr that it follows the CRD symlink; that is the point (one source).
exec .venv-chart/bin/python scripts/check_chart.py
