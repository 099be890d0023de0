#!/usr/bin/env bash
# A real multi-node Ray cluster on one machine: a head node and worker raylets, each its own
# `ray start` process with its own CPUs, for trying distglm's cluster path (submit, status,
# cancel, a lost node) without a cloud.
#
#   cluster/local.sh up       start the head and the workers, wait until all have joined
#   cluster/local.sh status   the nodes and the addresses to use
#   cluster/local.sh down     stop the nodes this script started (and only those)
#
# Uses the `ray` and `python` first on PATH (activate the environment where distglm is installed:
# the nodes run submitted jobs with that `python`). Settings, from the environment:
#   DISTGLM_LOCAL_DIR             state and logs (default ${TMPDIR:-/tmp}/distglm-local-cluster)
#   DISTGLM_LOCAL_WORKERS         worker nodes (default 2)
#   DISTGLM_LOCAL_CPUS            CPUs of each node, head included (default 1)
#   DISTGLM_LOCAL_PORT            the cluster's (GCS) port (default 6379)
#   DISTGLM_LOCAL_DASHBOARD_PORT  the dashboard and Jobs API port (default 8265)
set -euo pipefail

DIR="${DISTGLM_LOCAL_DIR:-${TMPDIR:-/tmp}/distglm-local-cluster}"
WORKERS="${DISTGLM_LOCAL_WORKERS:-2}"
CPUS="${DISTGLM_LOCAL_CPUS:-1}"
PORT="${DISTGLM_LOCAL_PORT:-6379}"
DASHBOARD_PORT="${DISTGLM_LOCAL_DASHBOARD_PORT:-8265}"
HOST=127.0.0.1
START_TIMEOUT_S=120

die() { echo "local.sh: $*" >&2; exit 1; }

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() {
    python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Start one node in the background, in its own session; `ray start --block` stays in the
# foreground of that session and stops the node's processes when it gets SIGTERM.
start_node() {
    local name="$1"; shift
    if command -v setsid >/dev/null; then
        setsid env MALLOC_ARENA_MAX=2 ray start --block --disable-usage-stats --node-ip-address="$HOST" --num-cpus="$CPUS" \
            --dashboard-agent-listen-port="$(free_port)" "$@" >"$DIR/$name.log" 2>&1 </dev/null &
    else
        env MALLOC_ARENA_MAX=2 ray start --block --disable-usage-stats --node-ip-address="$HOST" --num-cpus="$CPUS" \
            --dashboard-agent-listen-port="$(free_port)" "$@" >"$DIR/$name.log" 2>&1 </dev/null &
    fi
    echo $! >"$DIR/$name.pid"
}

# Wait until `python -c "$1"` succeeds, or fail after START_TIMEOUT_S or as soon as a node exits.
wait_for() {
    local check="$1" waited=0 pidfile
    until python -c "$check" >/dev/null 2>&1; do
        for pidfile in "$DIR"/*.pid; do
            alive "$pidfile" && continue
            tail -n 20 "${pidfile%.pid}.log" >&2
            die "$(basename "$pidfile" .pid) exited while starting; log: ${pidfile%.pid}.log; run '$0 down'"
        done
        (( waited++ < START_TIMEOUT_S )) || die "the cluster did not come up within ${START_TIMEOUT_S} s; logs in $DIR"
        sleep 1
    done
}

nodes_check() {  # succeeds once the cluster has $1 live nodes
    cat <<EOF
import ray, sys
ray.init(address="$HOST:$PORT", logging_level="ERROR", log_to_driver=False)
sys.exit(0 if sum(n["Alive"] for n in ray.nodes()) >= $1 else 1)
EOF
}

up() {
    command -v ray >/dev/null || die "no 'ray' on PATH; activate the environment where distglm is installed"
    alive "$DIR/head.pid" && die "already up (head pid $(cat "$DIR/head.pid")); run '$0 down' first"
    mkdir -p "$DIR"
    rm -f "$DIR"/*.pid
    # Every node, and every driver that connects, must agree on token authentication: use it,
    # with the token Ray keeps in ~/.ray/auth_token (generated on first use).
    export RAY_AUTH_MODE=token
    if [[ -z "${RAY_AUTH_TOKEN:-}" && ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]]; then
        ray get-auth-token --generate >/dev/null
    fi
    echo "starting the head node (port $PORT, dashboard $DASHBOARD_PORT, $CPUS CPU)"
    start_node head --head --port="$PORT" --dashboard-host="$HOST" --dashboard-port="$DASHBOARD_PORT" \
        --include-dashboard=true --ray-client-server-port="$(free_port)" --temp-dir="$DIR/ray"
    # Any HTTP answer (even 401 from a cluster with token authentication) means the dashboard is up.
    wait_for "import urllib.request, urllib.error
try:
    urllib.request.urlopen('http://$HOST:$DASHBOARD_PORT/api/version', timeout=2)
except urllib.error.HTTPError:
    pass"
    # One at a time: nodes starting together on one machine race for the same socket names.
    for i in $(seq 1 "$WORKERS"); do
        echo "starting worker node $i ($CPUS CPU)"
        start_node "worker-$i" --address="$HOST:$PORT"
        wait_for "$(nodes_check $((i + 1)))"
    done
    echo "up: 1 head + $WORKERS workers"
    echo "  export RAY_ADDRESS=http://$HOST:$DASHBOARD_PORT   # for distglm submit/status/cancel"
    echo "  distglm fit --address $HOST:$PORT ...            # a fit driven from this shell"
}

status() {
    local any=0
    for pidfile in "$DIR"/head.pid "$DIR"/worker-*.pid; do
        [[ -f "$pidfile" ]] || continue
        any=1
        local name; name="$(basename "$pidfile" .pid)"
        if alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: stopped"; fi
    done
    (( any )) || { echo "down (nothing started from $DIR)"; return 0; }
    if alive "$DIR/head.pid"; then
        RAY_AUTH_MODE=token python - <<EOF || true
import ray
ray.init(address="$HOST:$PORT", logging_level="ERROR", log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
print(f"cluster: {len(nodes)} live nodes, {ray.cluster_resources().get('CPU', 0):g} CPUs")
EOF
        echo "dashboard / Jobs API: http://$HOST:$DASHBOARD_PORT   cluster address: $HOST:$PORT"
    fi
}

down() {
    local pidfiles=() pidfile pid waited
    for pidfile in "$DIR"/worker-*.pid "$DIR"/head.pid; do
        [[ -f "$pidfile" ]] && pidfiles+=("$pidfile")
    done
    (( ${#pidfiles[@]} )) || { echo "down (nothing started from $DIR)"; return 0; }
    for pidfile in "${pidfiles[@]}"; do
        alive "$pidfile" && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "${pidfiles[@]}"; do
        pid="$(cat "$pidfile")"
        waited=0
        while kill -0 "$pid" 2>/dev/null && (( waited++ < 30 )); do sleep 1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$(basename "$pidfile" .pid) did not stop; killing its process group" >&2
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    echo "down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
