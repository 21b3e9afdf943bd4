#!/usr/bin/env bash
# Self-test of the nginx + Lua peer (benches/load/peers/nginx-lua.conf and
# peers/nginx-lua/*.lua): starts a private redis-server, `bouncer echo` and
# two nginx from the template — the benchmark's (a bucket that never
# refuses) and one whose bucket holds 2 requests — checks with curl that it
# admits and refuses what HAProxy's hs256 frontend does, then runs wrk for
# 5 s against the first. Exits non-zero naming the failed check. Uses the
# release binaries as they are (builds nothing).
#
# Usage: benches/load/nginx-lua-check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/load/common.sh
require wrk taskset curl python3 redis-server redis-cli nginx openssl
bin=${BOUNCER_BIN:-target/production/bouncer}
mint=${MINT_TOKENS:-target/production/mint_tokens}
[[ -x $bin && -x $mint ]] || { echo "missing $bin or $mint (cargo build --profile production -p bouncer -p bouncer-benches --bin bouncer --bin mint_tokens)" >&2; exit 1; }

echo_port=$(port); redis_port=$(port); lua_port=$(port); tiny_port=$(port)
export ISSUER=http://127.0.0.1:$(port) AUDIENCE=bouncer JWT_SECRET=$(openssl rand -hex 32)

# fill NAME PORT BURST PER_SECOND: the template with run.sh's sed, in
# $work/NAME, the bucket keys under route NAME.
fill() {
    mkdir -p "$work/$1"
    sed -e "s#route = \"full\"#route = \"$1\"#" -e "s#@WORK@#$work/$1#g" -e "s#@LUA_DIR@#$PWD/benches/load/peers/nginx-lua#g" \
        -e "s#@NGINX_LUA_PORT@#$2#g" -e "s#@ECHO_PORT@#$echo_port#g" -e "s#@REDIS_PORT@#$redis_port#g" \
        -e "s#@BUCKET_SCRIPT@#$PWD/crates/shared-state/src/bucket.lua#g" -e "s#@BURST@#$3#g" -e "s#@PER_SECOND@#$4#g" \
        benches/load/peers/nginx-lua.conf > "$work/$1/nginx-lua.conf"
}
fill bench "$lua_port" 1000000 1000000
fill tiny "$tiny_port" 2 0.01          # 2 requests, then one per 100 s

taskset -c 1 redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
redis_pid=$!
taskset -c 0 "$bin" echo --listen "127.0.0.1:$echo_port" 2>"$work/echo.log" & pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
for name in bench tiny; do
    taskset -c 0 nginx -c "$work/$name/nginx-lua.conf" -e "$work/$name/nginx-lua-error.log" \
        >"$work/$name/nginx.log" 2>&1 & pids+=($!)
done

failed() {
    echo "FAILED: $*" >&2
    for f in "$work"/*/nginx.log "$work"/*/nginx-lua-error.log; do
        [[ -s $f ]] && { echo "--- $f" >&2; tail -5 "$f" >&2; }
    done
    exit 1
}
ok() { echo "ok   $*"; }
# code PORT [CURL_ARGS...]: the status of GET /x.
code() { local p=$1; shift; curl -s -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$p/x"; }
# expect NAME WANT PORT TOKEN
expect() {
    local got; got=$(code "$3" -H "Authorization: Bearer $4")
    [[ $got == "$2" ]] || failed "$1: expected $2, got $got"
    ok "$1 -> $2"
}

for p in "$lua_port" "$tiny_port"; do
    for _ in $(seq 1 50); do [[ $(code "$p") == 401 ]] && break; sleep 0.1; done
    [[ $(code "$p") == 401 ]] || failed "nginx on port $p did not start"
done

# Tokens: from mint_tokens (what run.sh uses), and crafted here with
# openssl for the claims mint_tokens cannot vary (exp, alg, roles).
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
hs256() { openssl dgst -sha256 -mac HMAC -macopt "key:$1" -binary | b64url; }
# craft HEADER_JSON PAYLOAD_JSON [SECRET]
craft() {
    local h p
    h=$(printf '%s' "$1" | b64url); p=$(printf '%s' "$2" | b64url)
    printf '%s.%s.%s' "$h" "$p" "$(printf '%s' "$h.$p" | hs256 "${3:-$JWT_SECRET}")"
}
# claims EXP_OFFSET AUD_JSON ROLES_JSON [SUB]
claims() {
    printf '{"iss":"%s","aud":%s,"sub":"%s","roles":%s,"email":"crafted@example.com","exp":%d}' \
        "$ISSUER" "$2" "${4:-crafted-subject}" "$3" "$(($(date +%s) + $1))"
}
jwt_header='{"typ":"at+jwt","alg":"HS256"}'
payload_of() { python3 -c 'import base64,sys; p=sys.argv[1].split(".")[1]; print(base64.urlsafe_b64decode(p+"="*(-len(p)%4)).decode())' "$1"; }
sub_of() { payload_of "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sub"])'; }

token=$("$mint" hs256 "$JWT_SECRET" "$ISSUER" "$AUDIENCE")
sub=$(sub_of "$token")

# 1. A valid token: 200, identity injected, the client's spellings gone
# (`bouncer echo` returns the headers it received; a repeated one is a list).
body=$(curl -sf -H "Authorization: Bearer $token" -H 'X-User-Id: evil' -H 'x-user-id: evil' \
    -H 'X_User_Id: evil' -H 'X-User-Email: evil@example.com' -H 'X-USER-ROLES: admin' \
    "http://127.0.0.1:$lua_port/x") || failed "valid token: not 200"
python3 - "$body" "$sub" <<'PY' || failed "valid token: identity headers (body: $body)"
import json, sys
h = json.loads(sys.argv[1])["headers"]
want = {"x-user-id": sys.argv[2], "x-user-email": "load0@example.com", "x-user-roles": "user"}
for k, v in want.items():
    assert h.get(k) == v, f"{k}: {h.get(k)!r} != {v!r}"
assert "evil" not in sys.argv[1] and "admin" not in sys.argv[1], "a client-sent identity header reached the upstream"
assert not any(k.replace("_", "-") == "x-user-id" and k != "x-user-id" for k in h), "X_User_Id reached the upstream"
PY
ok "valid token -> 200, X-User-Id/Email/Roles injected, client-sent ones stripped"
expect "scheme in lower case" 200 "$lua_port" "$token"
[[ $(code "$lua_port" -H "authorization: bearer $token") == 200 ]] || failed "lower-case 'bearer' scheme"

# 2. Refusals.
[[ $(code "$lua_port") == 401 ]] || failed "no token: expected 401"; ok "no token -> 401"
[[ $(code "$lua_port" -H "Authorization: Basic dTpw") == 401 ]] || failed "Basic auth: expected 401"; ok "Basic credentials -> 401"
expect "garbage token" 401 "$lua_port" "not.a.jwt"
expect "signed with another secret" 401 "$lua_port" "$("$mint" hs256 "$(openssl rand -hex 32)" "$ISSUER" "$AUDIENCE")"
h=${token%%.*}; rest=${token#*.}; p=${rest%%.*}; s=${token##*.}
expect "payload swapped, signature kept" 401 "$lua_port" \
    "$h.$(claims 3600 '"bouncer"' '["user","admin"]' "$sub" | b64url).$s"
expect "alg HS512 (re-signed with the secret)" 401 "$lua_port" "$(craft '{"alg":"HS512"}' "$(claims 3600 '"bouncer"' '["user"]')")"
expect "alg hs256 (case differs)" 401 "$lua_port" "$(craft '{"alg":"hs256"}' "$(claims 3600 '"bouncer"' '["user"]')")"
expect "alg none, no signature" 401 "$lua_port" \
    "$(printf '%s' '{"alg":"none"}' | b64url).$(claims 3600 '"bouncer"' '["user"]' | b64url)."
expect "crafted control (proves the crafting)" 200 "$lua_port" "$(craft "$jwt_header" "$(claims 3600 '"bouncer"' '["user"]')")"
expect "aud as an array containing ours" 200 "$lua_port" "$(craft "$jwt_header" "$(claims 3600 '["other","bouncer"]' '["admin","user"]')")"
expect "expired 10 s ago" 401 "$lua_port" "$(craft "$jwt_header" "$(claims -10 '"bouncer"' '["user"]')")"
expect "other issuer" 401 "$lua_port" "$("$mint" hs256 "$JWT_SECRET" "http://evil.example" "$AUDIENCE")"
expect "other audience" 401 "$lua_port" "$("$mint" hs256 "$JWT_SECRET" "$ISSUER" "someone-else")"
expect "no role user" 403 "$lua_port" "$(craft "$jwt_header" "$(claims 3600 '"bouncer"' '["admin"]')")"

# 3. The bucket: burst 2 on the tiny nginx, then 429 with Retry-After.
token2=$("$mint" hs256 "$JWT_SECRET" "$ISSUER" "$AUDIENCE"); sub2=$(sub_of "$token2")
expect "tiny bucket, request 1" 200 "$tiny_port" "$token2"
expect "tiny bucket, request 2" 200 "$tiny_port" "$token2"
headers=$(curl -s -D - -o /dev/null -H "Authorization: Bearer $token2" "http://127.0.0.1:$tiny_port/x")
[[ $headers == "HTTP/1.1 429"* ]] || failed "tiny bucket, request 3: expected 429, got ${headers%%$'\r'*}"
retry=$(printf '%s' "$headers" | tr -d '\r' | awk -F': ' 'tolower($1)=="retry-after"{print $2}')
[[ $retry =~ ^[0-9]+$ && $retry -ge 1 ]] || failed "429 without a Retry-After (got '$retry')"
ok "tiny bucket, request 3 -> 429, Retry-After: $retry"
expect "another subject has its own bucket" 200 "$tiny_port" "$("$mint" hs256 "$JWT_SECRET" "$ISSUER" "$AUDIENCE")"
expect "the refused subject on the other route (own bucket)" 200 "$lua_port" "$token2"
key="nginx-lua:rl:{tiny:user:$sub2}"
redis-cli -p "$redis_port" --scan --pattern 'nginx-lua:rl:*' | grep -qxF "$key" || failed "Redis key $key missing"
ttl=$(redis-cli -p "$redis_port" pttl "$key")
[[ $ttl -gt 0 ]] || failed "Redis key $key has no TTL (PTTL $ttl)"
ok "Redis key $key, PTTL ${ttl} ms"

# 4. Connections: Redis and the upstream are reused, not reopened per request.
redis_connections() { redis-cli -p "$redis_port" info stats | awk -F: '/^total_connections_received/{print $2+0}'; }
before=$(redis_connections)
for _ in $(seq 1 30); do
    [[ $(code "$lua_port" -H "Authorization: Bearer $token") == 200 ]] || failed "30 requests: not all 200"
done
new=$(($(redis_connections) - before - 1))   # - 1: the second redis-cli's own
((new == 0)) || failed "Redis connections not pooled: $new new for 30 requests"
ok "Redis connection pooled (0 new for 30 requests)"
if command -v ss >/dev/null; then
    upstream=$(ss -Htn state established "( dport = :$echo_port )" | wc -l)
    ((upstream >= 1 && upstream <= 2)) || failed "upstream keep-alive: $upstream connections to echo"
    ok "upstream keep-alive ($upstream connections to echo: one per nginx)"
fi

# 5. NOSCRIPT: after SCRIPT FLUSH the script is loaded again.
redis-cli -p "$redis_port" script flush >/dev/null
expect "after SCRIPT FLUSH (NOSCRIPT, reload)" 200 "$lua_port" "$token"

# 6. Load: 5 s, nginx on core 0, wrk on core 1.
out=$(taskset -c 1 wrk -t1 -c64 -d5s -H "Authorization: Bearer $token" "http://127.0.0.1:$lua_port/x")
echo "$out" | grep -q 'Non-2xx' && failed "wrk saw refusals: $(echo "$out" | grep 'Non-2xx')"
echo "$out" | grep -q 'Socket errors' && failed "wrk saw errors: $(echo "$out" | grep 'Socket errors')"
echo "wrk -t1 -c64 -d5s: $(echo "$out" | awk '/Requests\/sec/{print $2}') requests/s ($(echo "$out" | awk '/Latency/{print "mean latency " $2}'))"

# 7. Redis gone: 503 + Retry-After, not a pass.
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
expect "Redis down" 503 "$lua_port" "$token"
echo "all checks passed"
