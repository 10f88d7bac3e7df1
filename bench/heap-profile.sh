#!/usr/bin/env bash
# Heap profile of the sidecar holding N idle connections, per connection, by allocation site.
#
#   bench/heap-profile.sh [CONNS] [-- extra bench args, e.g. --history-size 1000]
#
# Builds the sidecar with `--features dhat-heap` (and line tables) into target/heap, lets the
# load tool's `idle` scenario (through our own redis-server) hold CONNS clients on it, stops the
# sidecar cleanly so dhat writes its profile, and prints the live heap at its peak per connection
# (bench/heap-summary.py). The profile stays in target/heap/dhat-heap.json (open it in dhat's
# viewer, dh_view.html, for the whole call trees).
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-5000}
shift || true
[ "${1:-}" = "--" ] && shift
out=target/heap
CARGO_TARGET_DIR=$out CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release --locked -p taskstream-sidecar --features dhat-heap
cargo build --release --locked -p taskstream-bench

# The load tool kills its server with SIGKILL, which leaves no profile: it gets this wrapper,
# which starts the sidecar in its own session (so the sidecar outlives the wrapper's kill) and
# records its pid; we then stop it with SIGTERM.
rm -f "$out/sidecar.pid" "$out/dhat-heap.json"
cat > "$out/wrapper.sh" <<WRAP
#!/usr/bin/env bash
cd "$PWD/$out"
setsid "$PWD/$out/release/taskstream-sidecar" "\$@" &
echo \$! > "$PWD/$out/sidecar.pid"
wait
WRAP
chmod +x "$out/wrapper.sh"
target/release/taskstream-bench --runs 1 --target sidecar --broker redis \
    --sidecar-bin "$out/wrapper.sh" "$@" idle --conns "$conns"
pid=$(cat "$out/sidecar.pid")
kill -TERM "$pid"
for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
    echo "heap-profile: the sidecar ($pid) did not exit within 60 s of SIGTERM; killing it" >&2
    kill -KILL "$pid"
    exit 1
fi
python3 bench/heap-summary.py "$out/dhat-heap.json" "$conns"
