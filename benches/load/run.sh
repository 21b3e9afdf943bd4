#!/usr/bin/env bash
# Bouncer next to the proxies operators would otherwise pick, in one run on
# this machine: every server pinned to core 0, wrk to core 1 (Redis to
# REDIS_CORE, default 1: it stands for another host), interleaved rounds at
# fixed concurrency. Prints one table (req/s, p50/p99/p99.9, server CPU µs per
# request, RSS) with ratios, latency at half the gateway's peak next to the
# echo's at the same rate, RSS with 1,000 client connections held open, an
# optional soak, and the admin service's figures (benches/benches/admin_load.rs);
# writes it all to docs/benchmarks.md. Installs nothing: it names what is missing.
#
# Usage: [SOAK_MINUTES=10] [ADMIN_SECONDS=10] [REDIS_CORE=1]
#        benches/load/run.sh [SECONDS_PER_RUN] [ROUNDS] [CONNECTIONS]   (defaults 10 3 64)
# SOAK_MINUTES (default 0: none) runs the full pipeline for that long at half
# its peak over 1,000 connections, sampling RSS; ADMIN_SECONDS=0 skips the
# admin figures (which need PostgreSQL, as the tests do).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
rounds=${2:-3}
conns=${3:-64}
redis_core=${REDIS_CORE:-1}
soak_minutes=${SOAK_MINUTES:-0}
admin_seconds=${ADMIN_SECONDS:-10}

source benches/load/common.sh
require wrk taskset curl python3 redis-server redis-cli haproxy nginx openssl
lua_module=/usr/lib/nginx/modules/ngx_http_lua_module.so
for need in "$lua_module" /usr/share/lua/5.1/resty/core.lua /usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so; do
    [[ -e $need ]] || { echo "missing: $need (Debian: libnginx-mod-http-lua lua-resty-core lua-cjson)" >&2; exit 1; }
done
if ((admin_seconds > 0)); then
    require pg_isready
    pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not answering on 127.0.0.1:5432 (scripts/services.sh starts it; ADMIN_SECONDS=0 skips the admin figures)" >&2; exit 1; }
fi
cargo build --profile production -q -p bouncer -p bouncer-benches --bin bouncer --bin mint_tokens \
    --bin pingora_floor --bin hyper_proxy
bin=target/production/bouncer
mint=target/production/mint_tokens
admin=$(port); gw=$(port); metrics=$(port); echo_port=$(port); redis_port=$(port)
export ECHO_PORT=$echo_port HAPROXY_PLAIN_PORT=$(port) HAPROXY_HS256_PORT=$(port) HAPROXY_ES256_PORT=$(port)
nginx_port=$(port); nginx_lua_port=$(port); floor_port=$(port); hyper_port=$(port)
export ISSUER=http://127.0.0.1:$admin AUDIENCE=bouncer JWT_SECRET=$(openssl rand -hex 32)
openssl ecparam -name prime256v1 -genkey -noout -out "$work/es256.key" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$work/es256.key" -out "$work/es256-pkcs8.pem"
openssl ec -in "$work/es256.key" -pubout -out "$work/es256-pub.pem" 2>/dev/null
export ES256_PUBLIC_KEY=$work/es256-pub.pem

cat > "$work/routes.yaml" <<YAML
upstreams:
  echo: { targets: [127.0.0.1:$echo_port] }
routes:
  - { name: open, path: /open/**, upstream: echo, auth: none }
  # The full pipeline: EdDSA + role + a Redis bucket per user, generous
  # enough never to refuse (every request still pays the Redis call).
  - name: full
    path: /full/**
    upstream: echo
    roles: [user]
    rate_limit: { key: user, burst: 1000000, per_second: 1000000 }
YAML
sed -e "s#@WORK@#$work#g" -e "s#@ECHO_PORT@#$echo_port#g" -e "s#@NGINX_PLAIN_PORT@#$nginx_port#g" \
    benches/load/peers/nginx.conf > "$work/nginx.conf"
# The nginx + Lua peer's bucket is as generous as the gateway's (never refuses).
sed -e "s#@WORK@#$work#g" -e "s#@LUA_DIR@#$PWD/benches/load/peers/nginx-lua#g" \
    -e "s#@NGINX_LUA_PORT@#$nginx_lua_port#g" -e "s#@ECHO_PORT@#$echo_port#g" -e "s#@REDIS_PORT@#$redis_port#g" \
    -e "s#@BUCKET_SCRIPT@#$PWD/crates/shared-state/src/bucket.lua#g" -e "s#@BURST@#1000000#g" -e "s#@PER_SECOND@#1000000#g" \
    benches/load/peers/nginx-lua.conf > "$work/nginx-lua.conf"

start_stack "$bin" "$redis_core"
# The gateway's floor (pingora deciding nothing, set up as the gateway sets
# it up) and the same plain proxying written on hyper: where the cost is.
taskset -c 0 target/production/pingora_floor "127.0.0.1:$floor_port" "127.0.0.1:$echo_port" 2>"$work/floor.log" & pids+=($!)
floor_pid=$!
taskset -c 0 target/production/hyper_proxy "127.0.0.1:$hyper_port" "127.0.0.1:$echo_port" 2>"$work/hyper.log" & pids+=($!)
hyper_pid=$!
taskset -c 0 haproxy -f benches/load/peers/haproxy.cfg -db >"$work/haproxy.log" 2>&1 & pids+=($!)
haproxy_pid=$!
taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" >"$work/nginx.log" 2>&1 & pids+=($!)
taskset -c 0 nginx -c "$work/nginx-lua.conf" -e "$work/nginx-lua-error.log" >"$work/nginx-lua.log" 2>&1 & pids+=($!)
nginx_lua_master=$!  # taskset execs nginx: this is the master
sleep 0.5
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null || { echo "gateway not ready; see $work/*.log" >&2; exit 1; }
nginx_master=$(pgrep -f "nginx -c $work/nginx.conf" | head -1)
nginx_pids="$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"  # master and its worker
nginx_lua_pids="$nginx_lua_master $(pgrep -P "$nginx_lua_master" | tr '\n' ' ')"

# Tokens: EdDSA signed with the admin's key (one user, and 1,000 users), and
# HS256/ES256 with the same claims for HAProxy (and HS256 for nginx + Lua).
"$mint" eddsa "$work/keys" "$ISSUER" "$AUDIENCE" 1000 > "$work/tokens-1000"
token=$(head -1 "$work/tokens-1000")
token_hs=$("$mint" hs256 "$JWT_SECRET" "$ISSUER" "$AUDIENCE")
token_es=$("$mint" es256 "$work/es256-pkcs8.pem" "$ISSUER" "$AUDIENCE")
for check in "$gw/full/x|$token" "$HAPROXY_HS256_PORT/x|$token_hs" "$HAPROXY_ES256_PORT/x|$token_es" \
    "$nginx_lua_port/x|$token_hs" "$floor_port/x|" "$hyper_port/x|"; do
    url=${check%%|*}; tok=${check#*|}
    [[ $url == *:* ]] || url="127.0.0.1:$url"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "http://$url")
    [[ $code == 200 ]] || { echo "setup check failed: $url answered $code" >&2; exit 1; }
done

cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
rss_mib() { local k=0; for p in "$@"; do k=$((k + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $((k / 1024)); }
hz=$(getconf CLK_TCK)

# One wrk run: prints "rps p50 p99 p999 cpu_us_per_req rss_mib".
run() {
    local url=$1 tok=$2 tokens_file=$3; shift 3
    local before out
    before=$(cpu_ticks "$@")
    out=$(TOKENS_FILE=$tokens_file CONNS=$conns taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" -s benches/load/wrk.lua \
        -H "Authorization: Bearer $tok" "$url")
    local after; after=$(cpu_ticks "$@")
    python3 - "$before" "$after" "$hz" "$(rss_mib "$@")" <<PY
import sys
before, after, hz, rss = map(float, sys.argv[1:])
line = [l for l in """$out""".splitlines() if l.startswith("RESULT")][0].split()
rps, p50, p99, p999, n, errors = float(line[1]), line[2], line[3], line[4], int(line[5]), int(line[6])
if errors:
    sys.exit(f"$url: {errors} errors or non-2xx responses")
print(f"{rps:.0f} {p50} {p99} {p999} {(after - before) / hz * 1e6 / n:.1f} {rss:.0f}")
PY
}

declare -A results
scenarios=(direct nginx haproxy hyper floor none hap_hs256 hap_es256 nginx_lua full1 full1000 half_direct half_full1)
for r in $(seq 1 "$rounds"); do
    results[direct]+="$(run "http://127.0.0.1:$echo_port/x" "$token" "" "$echo_pid")"$'\n'
    results[nginx]+="$(run "http://127.0.0.1:$nginx_port/x" "$token" "" $nginx_pids)"$'\n'
    results[haproxy]+="$(run "http://127.0.0.1:$HAPROXY_PLAIN_PORT/x" "$token" "" "$haproxy_pid")"$'\n'
    results[hyper]+="$(run "http://127.0.0.1:$hyper_port/x" "$token" "" "$hyper_pid")"$'\n'
    results[floor]+="$(run "http://127.0.0.1:$floor_port/x" "$token" "" "$floor_pid")"$'\n'
    results[none]+="$(run "http://127.0.0.1:$gw/open/x" "$token" "" "$gateway_pid")"$'\n'
    results[hap_hs256]+="$(run "http://127.0.0.1:$HAPROXY_HS256_PORT/x" "$token_hs" "" "$haproxy_pid")"$'\n'
    results[hap_es256]+="$(run "http://127.0.0.1:$HAPROXY_ES256_PORT/x" "$token_es" "" "$haproxy_pid")"$'\n'
    results[nginx_lua]+="$(run "http://127.0.0.1:$nginx_lua_port/x" "$token_hs" "" $nginx_lua_pids "$redis_pid")"$'\n'
    results[full1]+="$(run "http://127.0.0.1:$gw/full/x" "$token" "" "$gateway_pid" "$redis_pid")"$'\n'
    results[full1000]+="$(run "http://127.0.0.1:$gw/full/x" "$token" "$work/tokens-1000" "$gateway_pid" "$redis_pid")"$'\n'
done

median_rps() { printf '%s' "$1" | awk '{print $1}' | sort -n | awk '{v[NR]=$1} END {print int(v[int((NR+1)/2)])}'; }
# Latency at half the full pipeline's peak: the gateway, and the echo alone at
# the same offered rate (what the gateway adds, not what saturation does).
half=$(( $(median_rps "${results[full1]}") / 2 ))
for r in $(seq 1 "$rounds"); do
    results[half_direct]+="$(RATE=$half run "http://127.0.0.1:$echo_port/x" "$token" "" "$echo_pid")"$'\n'
    results[half_full1]+="$(RATE=$half run "http://127.0.0.1:$gw/full/x" "$token" "" "$gateway_pid" "$redis_pid")"$'\n'
done

# RSS with 1,000 client connections held open (each served one request).
rss_held() {
    local pid=$1 port=$2 path=$3
    coproc HOLD { python3 benches/load/hold_connections.py 127.0.0.1 "$port" 1000 "$path" "$token"; }
    read -r _ <&"${HOLD[0]}"
    rss_mib "$pid"
    eval "exec ${HOLD[1]}>&-"
    wait "$HOLD_PID" 2>/dev/null || true
}
held_gateway=$(rss_held "$gateway_pid" "$gw" /full/x)
held_haproxy=$(rss_held "$haproxy_pid" "$HAPROXY_PLAIN_PORT" /x)

# Soak: the full pipeline, 1,000 users over 1,000 connections, at half the
# 1,000-user peak, RSS sampled every 30 s.
: > "$work/soak"
if ((soak_minutes > 0)); then
    soak_rate=$(( $(median_rps "${results[full1000]}") / 2 ))
    echo "soak: ${soak_minutes} min at ${soak_rate} req/s over 1000 connections" >&2
    before=$(cpu_ticks "$gateway_pid")
    RATE=$soak_rate CONNS=1000 TOKENS_FILE=$work/tokens-1000 taskset -c 1 wrk -t1 -c1000 -d"${soak_minutes}m" \
        -s benches/load/wrk.lua -H "Authorization: Bearer $token" "http://127.0.0.1:$gw/full/x" > "$work/soak.out" &
    soak_wrk=$!
    start=$SECONDS
    while kill -0 "$soak_wrk" 2>/dev/null; do
        echo "sample $((SECONDS - start)) $(rss_mib "$gateway_pid")" >> "$work/soak"
        sleep 30
    done
    wait "$soak_wrk"
    echo "sample $((SECONDS - start)) $(rss_mib "$gateway_pid")" >> "$work/soak"
    n=$(awk '/^RESULT/{print $6}' "$work/soak.out")
    echo "cpu $(( ($(cpu_ticks "$gateway_pid") - before) * 1000000 / hz / n ))" >> "$work/soak"
    grep '^RESULT' "$work/soak.out" >> "$work/soak"
    echo "rate $soak_rate" >> "$work/soak"
    echo "minutes $soak_minutes" >> "$work/soak"
fi

# The admin service's figures (its own fresh PostgreSQL database and server).
: > "$work/admin"
if ((admin_seconds > 0)); then
    BOUNCER_BIN=$PWD/$bin cargo bench -q -p bouncer-benches --bench admin_load -- "$admin_seconds" > "$work/admin.out"
    sed -n '/^| scenario/,$p' "$work/admin.out" > "$work/admin"
fi

{
    for k in "${scenarios[@]}"; do printf '%s\n%s@@\n' "$k" "${results[$k]}"; done
    printf 'held\n%s %s\n@@\n' "$held_gateway" "$held_haproxy"
} > "$work/results"
python3 benches/load/report.py "$work/results" "$secs" "$rounds" "$conns" "$redis_core" "$half" \
    "$work/soak" "$work/admin" "$admin_seconds" | tee docs/benchmarks.md
