#!/usr/bin/env bash
# `make serve`: a local Prefect server with its UI, the ganflow-process work pool, the deployments of
# deployments/prefect.yaml, and a worker for that pool. Ctrl-C stops the worker and the server.
#
#   PREFECT_PORT=4200   port of the server and UI (http://127.0.0.1:$PREFECT_PORT)
#   GANFLOW_ROOT        the project checkout runs execute in (default: this script's project)
#   PREFECT_HOME        where the server keeps its SQLite database (default: ~/.prefect); for a
#                       PostgreSQL-backed server set PREFECT_API_DATABASE_CONNECTION_URL (see README)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GANFLOW_ROOT="${GANFLOW_ROOT:-$ROOT}"
PORT="${PREFECT_PORT:-4200}"
BIN="$ROOT/.venv/bin"
export PATH="$BIN:$PATH"   # the worker's `prefect flow-run execute` runs (train, pipeline) need it
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
LOG="${GANFLOW_SERVER_LOG:-$GANFLOW_ROOT/runs/prefect-server.log}"
mkdir -p "$(dirname "$LOG")"
cd "$GANFLOW_ROOT"

server="" worker=""
stop() {  # stop TARGET PID: SIGTERM to TARGET (a pid or -group), SIGKILL after 10 s if PID still lives
    kill -TERM -- "$1" 2>/dev/null || return 0
    for _ in $(seq 1 20); do kill -0 "$2" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "$1" 2>/dev/null || true
    wait "$2" 2>/dev/null || true
}
cleanup() {
    # A background job of a script ignores SIGINT, so Ctrl-C reaches the worker through here.
    # Prefect's worker does not always exit on one signal: give it 10 s, then SIGKILL it.
    if [ -n "$worker" ]; then stop "$worker" "$worker"; fi
    # The server runs in its own session (setsid): stop its whole group (uvicorn and its services).
    if [ -n "$server" ]; then stop "-$server" "$server"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then
    echo "serve: using the Prefect server already at http://127.0.0.1:$PORT"
else
    echo "serve: starting the Prefect server on http://127.0.0.1:$PORT (log: $LOG)"
    setsid "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
    server=$!
    for _ in $(seq 1 180); do
        curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
        kill -0 "$server" 2>/dev/null || { echo "serve: the server exited; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
        sleep 1
    done
    curl -fsS "$PREFECT_API_URL/health" >/dev/null || { echo "serve: no server after 180 s; see $LOG" >&2; exit 1; }
fi

"$BIN/prefect" work-pool inspect ganflow-process >/dev/null 2>&1 \
    || "$BIN/prefect" work-pool create ganflow-process --type process
"$BIN/prefect" --no-prompt deploy --prefect-file deployments/prefect.yaml --all
echo "serve: UI at http://127.0.0.1:$PORT — start a run from Deployments; Ctrl-C stops the worker and the server"
"$BIN/prefect" worker start --pool ganflow-process "$@" &
worker=$!
wait "$worker"
