#!/usr/bin/env bash
# Gateway load benchmark: `bouncer echo` directly, the gateway on an
# `auth: none` route, and the gateway on an authenticated, role-checked
# route, with and without a Redis token bucket (the full pipeline) —
# interleaved rounds, one load generator (wrk) at fixed concurrency, servers
# (and a private redis-server) pinned to core 0 and wrk to core 1. Prints
# requests/s, p50/p99 and ratios. Installs nothing: it names what is missing.
#
# Redis runs on core REDIS_CORE (default 1, beside wrk): in production it is
# another host, so its CPU is not the gateway's. REDIS_CORE=0 charges it to
# the server core instead (the all-on-one-core worst case).
#
# BASELINE_BIN=path/to/other/bouncer adds a second gateway from that binary
# (same admin, echo, Redis and routes, its own ports) and its rows, in the
# same interleaved rounds: a refactor's before/after without two runs.
# BASELINE_GATEWAY_YAML adds lines to that gateway's `gateway:` section
# (e.g. '  access_log: { enabled: false }' with this build as the
# baseline: logging's cost); BASELINE_LABEL names its rows.
#
# Usage: [REDIS_CORE=0|1] [BASELINE_BIN=… [BASELINE_GATEWAY_YAML=…] [BASELINE_LABEL=…]]
#        benches/load/gateway.sh [SECONDS_PER_RUN] [ROUNDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
rounds=${2:-3}
conns=${3:-64}

source benches/load/common.sh
require wrk taskset curl python3 redis-server redis-cli
# BOUNCER_BIN: a binary built already (as scripts/run.sh takes it).
if [[ -n ${BOUNCER_BIN:-} ]]; then
    bin=$BOUNCER_BIN
else
    cargo build --profile production -q -p bouncer
    bin=target/production/bouncer
fi
admin=$(port); gw=$(port); metrics=$(port); echo_port=$(port); redis_port=$(port)
cat > "$work/routes.yaml" <<YAML
upstreams:
  admin: { targets: [127.0.0.1:$admin] }
  echo:  { targets: [127.0.0.1:$echo_port] }
routes:
  - { name: auth, path: /auth/**, upstream: admin, auth: none }
  - { name: open, path: /open/**, upstream: echo, auth: none }
  - { name: api,  path: /api/**,  upstream: echo, roles: [user, admin] }
  # The same route, authenticated by an API key instead of a JWT.
  - { name: keyed, path: /keyed/**, upstream: echo, roles: [user, admin], credentials: [api_key] }
  # The full pipeline: a bucket generous enough never to refuse, so every
  # request pays the Redis call and nothing else changes.
  - name: limited
    path: /limited/**
    upstream: echo
    roles: [user, admin]
    rate_limit: { key: user, burst: 1000000, per_second: 1000000 }
YAML

start_stack "$bin" "${REDIS_CORE:-1}"
base=${BASELINE_BIN:-}
if [[ -n $base ]]; then
    base_gw=$(port); base_metrics=$(port)
    sed -e "s/127.0.0.1:$gw\$/127.0.0.1:$base_gw/" -e "s/127.0.0.1:$metrics\$/127.0.0.1:$base_metrics/" \
        -e "s#routes: $work/routes.yaml#routes: $work/baseline-routes.yaml#" \
        "$work/bouncer.yaml" | awk -v extra="${BASELINE_GATEWAY_YAML:-}" '{ print } /^gateway:$/ && extra { print extra }' \
        > "$work/baseline.yaml"
    # Without the API-key route: an older build may not know `credentials`.
    grep -v 'name: keyed' "$work/routes.yaml" > "$work/baseline-routes.yaml"
    taskset -c 0 "$base" gateway --config "$work/baseline.yaml" 2>"$work/baseline.log" & pids+=($!)
fi
for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'authorization: Bearer x' "http://127.0.0.1:$gw/api/x" || true)
    [[ $code == 401 ]] && break
    sleep 0.1
done
[[ ${code:-} == 401 ]] || { echo "gateway did not become ready; see $work/*.log" >&2; exit 1; }
for m in $metrics ${base_metrics:-}; do
    for _ in $(seq 1 100); do
        curl -s "http://127.0.0.1:$m/metrics" | grep -q '^bouncer_gateway_revocations_ready 1' && break
        sleep 0.1
    done
done

body='{"email":"load@example.com","password":"load test passphrase"}'
curl -sf "http://127.0.0.1:$gw/auth/signup" -H 'content-type: application/json' -d "$body" >/dev/null
token=$(curl -sf "http://127.0.0.1:$gw/auth/login" -H 'content-type: application/json' -d "$body" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
key=$(curl -sf "http://127.0.0.1:$admin/users/me/api-keys" -H 'content-type: application/json' \
    -H "authorization: Bearer $token" -d '{"name":"load"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
for _ in $(seq 1 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $key" "http://127.0.0.1:$gw/keyed/x") == 200 ]] && break
    sleep 0.1
done

# One wrk run: prints "rps p50_ms p99_ms".
run() {
    local url=$1; shift
    taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" --latency "$@" "$url" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(label):
    m = re.search(r"^\s+" + str(label) + r"%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if non2xx:
    sys.exit("non-2xx responses: " + non2xx.group(1))
print(f"{rps:.0f} {ms(50):.3f} {ms(99):.3f}")
'
}

declare -A results
for r in $(seq 1 "$rounds"); do
    results[direct]+="$(run "http://127.0.0.1:$echo_port/open/x" -H "Authorization: Bearer $token")"$'\n'
    # Every row sends the same request, token included (unread directly and
    # on the auth: none route): the ratios are the cost of what the gateway
    # does with it, not of carrying and echoing back a kilobyte more.
    results[none]+="$(run "http://127.0.0.1:$gw/open/x" -H "Authorization: Bearer $token")"$'\n'
    results[auth]+="$(run "http://127.0.0.1:$gw/api/x" -H "Authorization: Bearer $token")"$'\n'
    results[full]+="$(run "http://127.0.0.1:$gw/limited/x" -H "Authorization: Bearer $token")"$'\n'
    results[key]+="$(run "http://127.0.0.1:$gw/keyed/x" -H "Authorization: Bearer $key")"$'\n'
    if [[ -n $base ]]; then
        results[base_none]+="$(run "http://127.0.0.1:$base_gw/open/x" -H "Authorization: Bearer $token")"$'\n'
        results[base_auth]+="$(run "http://127.0.0.1:$base_gw/api/x" -H "Authorization: Bearer $token")"$'\n'
        results[base_full]+="$(run "http://127.0.0.1:$base_gw/limited/x" -H "Authorization: Bearer $token")"$'\n'
    fi
done

python3 - "$secs" "$rounds" "$conns" <<PY
import statistics, sys
secs, rounds, conns = sys.argv[1:]
rows = {
    "direct": """${results[direct]}""",
    "none": """${results[none]}""",
    "auth": """${results[auth]}""",
    "full": """${results[full]}""",
    "key": """${results[key]}""",
    "base_none": """${results[base_none]:-}""",
    "base_auth": """${results[base_auth]:-}""",
    "base_full": """${results[base_full]:-}""",
}
rows = {k: v for k, v in rows.items() if v.strip()}
med = {}
for k, text in rows.items():
    runs = [list(map(float, line.split())) for line in text.strip().splitlines()]
    med[k] = [statistics.median(col) for col in zip(*runs)]
names = {
    "direct": "bouncer echo, direct",
    "none": "gateway, auth: none",
    "auth": "gateway, EdDSA + role check",
    "full": "gateway, EdDSA + role + Redis bucket",
    "key": "gateway, API key + role",
    "base_none": "${BASELINE_LABEL:-baseline} gateway, auth: none",
    "base_auth": "${BASELINE_LABEL:-baseline} gateway, EdDSA + role check",
    "base_full": "${BASELINE_LABEL:-baseline} gateway, EdDSA + role + Redis bucket",
}
print(f"# gateway load: wrk -t1 -c{conns}, {secs}s x {rounds} interleaved rounds (medians); servers on core 0, wrk on core 1, redis on core ${REDIS_CORE:-1}")
print()
print("| scenario | req/s | p50 ms | p99 ms | vs direct | vs auth: none |")
print("|---|---:|---:|---:|---:|---:|")
for k in ("direct", "none", "auth", "key", "full", "base_none", "base_auth", "base_full"):
    if k not in med:
        continue
    rps, p50, p99 = med[k]
    print(f"| {names[k]} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {rps / med['direct'][0]:.2f} | {rps / med['none'][0]:.2f} |")
print()
print(f"authenticated / auth: none throughput: {med['auth'][0] / med['none'][0]:.2f} (target >= 0.85)")
print(f"full pipeline (+ Redis bucket) / auth: none: {med['full'][0] / med['none'][0]:.2f} (target >= 0.80)")
print(f"full pipeline / authenticated without bucket: {med['full'][0] / med['auth'][0]:.2f}")
print(f"API key route / JWT route: {med['key'][0] / med['auth'][0]:.2f} (target >= 1.0)")
if "base_none" in med:
    print()
    print("this build / ${BASELINE_LABEL:-baseline} (${BASELINE_BIN:-} ${BASELINE_GATEWAY_YAML:-}):")
    for k in ("none", "auth", "full"):
        print(f"  {names[k].removeprefix('gateway, ')}: {med[k][0] / med['base_' + k][0]:.2f}")
PY
