#!/usr/bin/env bash
# `make serve`: a local Prefect server with its UI, the ganflow-process work pool, the deployments of
# deployments/prefect.yaml, and a worker for that pool. Ctrl-C or SIGTERM stops everything it started (the
# worker, the runs it is executing, and the server it started) within 10 seconds, in the foreground or not.
#
#   PREFECT_PORT=4200   port of the server and UI (http://127.0.0.1:$PREFECT_PORT)
#   GANFLOW_ROOT        the project checkout runs execute in (default: this script's project)
#   PREFECT_HOME        where the server keeps its SQLite database (default: ~/.prefect); for a
#                       PostgreSQL-backed server set PREFECT_API_DATABASE_CONNECTION_URL (see README)
#   PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=WARNING   what the terminal shows; runs log at INFO to the UI regardless
#   GANFLOW_NOTIFY_BLOCK=slack-webhook/NAME   the notification block of the "train run failed for good" automation
#   GANFLOW_FAILED_WITHIN_S=900   how long a Failed/Crashed train run has to run again before it is reported
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.venv/bin"
# A script started in the background by another script (`make serve &`) inherits SIGINT ignored, and bash can
# neither trap nor reset a signal ignored on entry: Ctrl-C / kill -INT would do nothing. Start again once with
# SIGINT at its default, so the trap below works.
if [ -z "${GANFLOW_SERVE_SIGNALS:-}" ] && [ -x "$BIN/python" ]; then
    export GANFLOW_SERVE_SIGNALS=1
    exec "$BIN/python" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
        /usr/bin/env bash "${BASH_SOURCE[0]}" "$@"
fi

export GANFLOW_ROOT="${GANFLOW_ROOT:-$ROOT}"
PORT="${PREFECT_PORT:-4200}"
export PATH="$BIN:$PATH"   # the worker's `prefect flow-run execute` runs (train, pipeline) need it
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
# The terminal stays quiet through the console handler's level; PREFECT_LOGGING_LEVEL would also silence what
# runs send to the API (the UI's Logs tab), since the worker's runs inherit it.
export PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="${PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL:-WARNING}"
case "${PREFECT_LOGGING_LEVEL:-INFO}" in
    WARNING|ERROR|CRITICAL) echo "serve: PREFECT_LOGGING_LEVEL=$PREFECT_LOGGING_LEVEL leaves the runs' Logs tabs empty;" \
        "unset it (PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL quiets the terminal)" >&2 ;;
esac
LOG="${GANFLOW_SERVER_LOG:-$GANFLOW_ROOT/runs/prefect-server.log}"
mkdir -p "$(dirname "$LOG")"
cd "$GANFLOW_ROOT"

server="" worker="" step=""
descendants() {  # every process below pid $1
    local kid
    for kid in $(pgrep -P "$1" 2>/dev/null); do echo "$kid"; descendants "$kid"; done
}
alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
wait_gone() {  # wait_gone SECONDS PID...: until none of the pids lives, at most SECONDS
    local t=$(( $1 * 10 )); shift
    while [ "$t" -gt 0 ] && alive "$@"; do sleep 0.1; t=$(( t - 1 )); done
}
cleanup() {
    trap '' INT TERM   # a second Ctrl-C must not cut the cleanup short
    set +e
    local all=() runs=() p
    for p in $step $worker $server; do all+=("$p" $(descendants "$p")); done
    # 1. The worker first stops taking runs (SIGSTOP: frozen, it polls no more, and its runs go on): a run
    #    rescheduled in 2. must wait for the next worker. Signalled instead, it still polls while it winds down,
    #    takes that run (Pending) and dies before starting it, stranding it.
    if [ -n "$worker" ]; then
        kill -STOP "$worker" 2>/dev/null || true
        runs=($(pgrep -P "$worker" 2>/dev/null || true))
    fi
    # 2. The runs it is executing (its children): a training run under `prefect flow-run execute` checkpoints
    #    and is set AwaitingRetry (the next worker resumes it), which needs the server up. Only the top of each
    #    run's tree gets the signal: the supervisor forwards it to the flow itself.
    for p in $step "${runs[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    # 3. The server, in its own session (setsid): its whole group, uvicorn and its services; at once when no
    #    run needs it to report its state.
    if [ -n "$server" ] && [ "${#runs[@]}" -eq 0 ]; then kill -TERM -- "-$server" 2>/dev/null || true; fi
    if [ -n "$step" ] || [ "${#runs[@]}" -gt 0 ]; then wait_gone 5 $step "${runs[@]}"; fi
    # The worker has nothing left to report (its runs reported their own states): it goes, frozen.
    if [ -n "$worker" ]; then kill -KILL "$worker" 2>/dev/null || true; fi
    if [ -n "$server" ]; then kill -TERM -- "-$server" 2>/dev/null || true; wait_gone 3 "$server"; fi
    # 4. Whatever is left, and anything started meanwhile: SIGKILL.
    for p in $step $worker $server; do all+=($(descendants "$p")); done
    for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if [ -n "$server" ]; then kill -KILL -- "-$server" 2>/dev/null || true; fi
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Each long command runs in the background and is waited for: bash runs a trap only once the foreground
# command ends, so a SIGTERM during `prefect deploy` would otherwise wait for it.
run() { "$@" & step=$!; local rc=0; wait "$step" || rc=$?; step=""; return "$rc"; }

if curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then
    echo "serve: using the Prefect server already at http://127.0.0.1:$PORT"
else
    echo "serve: starting the Prefect server on http://127.0.0.1:$PORT (log: $LOG)"
    # The server's log file keeps its INFO lines (e.g. the scheduler's "Scheduled N runs.").
    env -u PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL setsid "$BIN/prefect" server start --host 127.0.0.1 \
        --port "$PORT" >"$LOG" 2>&1 &
    server=$!
    for _ in $(seq 1 180); do
        curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
        kill -0 "$server" 2>/dev/null || { echo "serve: the server exited; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
        sleep 1
    done
    curl -fsS "$PREFECT_API_URL/health" >/dev/null || { echo "serve: no server after 180 s; see $LOG" >&2; exit 1; }
fi

run "$BIN/prefect" work-pool inspect ganflow-process >/dev/null 2>&1 \
    || run "$BIN/prefect" work-pool create ganflow-process --type process
run "$BIN/prefect" --no-prompt deploy --prefect-file deployments/prefect.yaml --all
# The automation that notifies when a train run failed for good (created, or updated: idempotent; README).
run "$BIN/python" "$ROOT/deployments/automation.py" ${GANFLOW_FAILED_WITHIN_S:+--within "$GANFLOW_FAILED_WITHIN_S"}
echo "serve: UI at http://127.0.0.1:$PORT — start a run from Deployments; Ctrl-C stops everything started here"
# Its own process group, so a terminal's Ctrl-C reaches it only through cleanup (runs first, then the server).
setsid "$BIN/prefect" worker start --pool ganflow-process "$@" &
worker=$!
wait "$worker"
