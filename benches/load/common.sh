# Sourced by the load scripts: tool checks, a work directory whose processes
# are stopped on exit, and free ports.

# require TOOL... : exits naming every missing tool (installs nothing).
require() {
    local missing=()
    for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    if ((${#missing[@]})); then
        echo "missing: ${missing[*]} (from Debian's packages: wrk, util-linux for taskset, curl, python3," >&2
        echo "redis-server, haproxy, nginx-light, openssl)" >&2
        exit 1
    fi
}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_stack BIN REDIS_CORE: writes $work/bouncer.yaml for the ports in
# $admin $gw $metrics $echo_port $redis_port (routes: $work/routes.yaml, the
# caller's), then starts a private redis-server on core REDIS_CORE and
# `bouncer echo`, `bouncer admin` and `bouncer gateway` on core 0. Sets
# redis_pid, echo_pid and gateway_pid; readiness is the caller's to wait for.
start_stack() {
    local bin=$1 redis_core=$2 issuer=http://127.0.0.1:$admin
    cat > "$work/bouncer.yaml" <<YAML
admin:
  listen: 127.0.0.1:$admin
  database: sqlite://$work/b.db
  keys_dir: $work/keys
  issuer: $issuer
gateway:
  listen: 127.0.0.1:$gw
  metrics_listen: 127.0.0.1:$metrics
  routes: $work/routes.yaml
  jwks_url: $issuer/.well-known/jwks.json
  issuer: $issuer
redis: redis://127.0.0.1:$redis_port
YAML
    # Logging as shipped (RUST_LOG unset: info, access log on, to the log
    # files below): a benchmark with the logs off measures what nobody runs.
    unset RUST_LOG
    taskset -c "$redis_core" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        >"$work/redis.log" 2>&1 & pids+=($!)
    redis_pid=$!
    for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    taskset -c 0 "$bin" echo --listen "127.0.0.1:$echo_port" 2>"$work/echo.log" & pids+=($!)
    echo_pid=$!
    taskset -c 0 "$bin" admin --config "$work/bouncer.yaml" 2>"$work/admin.log" & pids+=($!)
    taskset -c 0 "$bin" gateway --config "$work/bouncer.yaml" 2>"$work/gateway.log" & pids+=($!)
    gateway_pid=$!
}
