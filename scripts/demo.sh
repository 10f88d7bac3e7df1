#!/usr/bin/env bash
# Local mode: the taskstream sidecar (in-memory broker with history, no Redis, no cluster) in
# front of the demo app; the page uses the browser client clients/js (served by the app). Open the printed URL, click "Start task", watch the progress bars. Ctrl-C stops both.
#
#   PORT=8080 ADMIN_PORT=9090 APP_PORT=8000 ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-9090}"
APP_PORT="${APP_PORT:-8000}"

cargo build --release --locked -q -p taskstream-sidecar -p taskstream-demo
bin="${CARGO_TARGET_DIR:-target}/release"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/taskstream-demo" --listen "127.0.0.1:$APP_PORT" --publish-url "http://127.0.0.1:$ADMIN_PORT" &
pids+=($!)
# Forward auth: the demo app logs each browser in with a cookie and answers /ws-auth/.
"$bin/taskstream-sidecar" --broker memory --auth forward --history-size 100 \
  --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "http://127.0.0.1:$APP_PORT" &
pids+=($!)

for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done
echo
echo "  taskstream demo is running: open http://localhost:$PORT/"
echo "  (publish by hand: curl -d '{\"type\":\"progress\",\"task\":1,\"percent\":50,\"state\":\"running\"}' http://127.0.0.1:$ADMIN_PORT/publish/user:<id>)"
echo "  Ctrl-C to stop."
echo
wait -n "${pids[@]}"
