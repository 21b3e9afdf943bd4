#!/usr/bin/env bash
# Fuzzes the admin API against its own OpenAPI document with schemathesis.
#
# For each backend (SQLite in a temp dir, then a fresh PostgreSQL database):
# starts `bouncer admin` (the debug build; CARGO_TARGET_DIR is honoured),
# makes an administrator, logs in, and runs schemathesis against
# GET /openapi.json with that bearer token. Fails on any 5xx, any status,
# body, content type or header the document does not describe, any request
# the document calls invalid that the API accepts (or valid that it refuses
# as invalid), an error in the service's log, and a crash.
#
# The run is derandomized (hypothesis' deterministic mode, one worker), so
# it is the same run every time; SCHEMATHESIS_SEED=N makes it a random run
# from seed N instead, to explore further (with SCHEMATHESIS_MAX_EXAMPLES,
# default 40 per operation). SCHEMATHESIS_BACKENDS="sqlite" skips
# PostgreSQL. Extra arguments go to `schemathesis run` (e.g.
# --include-path /auth/login, or --report har --report-dir DIR).
#
# schemathesis comes from scripts/schemathesis-requirements.txt (pinned) in
# a virtual environment under the repo (.venv-schemathesis, or
# $SCHEMATHESIS_VENV), made on first use. Settings that the command line
# cannot give per operation are in scripts/schemathesis.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/debug/bouncer
venv=${SCHEMATHESIS_VENV:-$root/.venv-schemathesis}
requirements=$root/scripts/schemathesis-requirements.txt
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-40}
backends=${SCHEMATHESIS_BACKENDS:-sqlite postgres}
if [[ -n ${SCHEMATHESIS_SEED:-} ]]; then
    generation=(--seed "$SCHEMATHESIS_SEED")
else
    generation=(--generation-deterministic)
fi
# The service must use the database this script makes, nothing else.
unset BOUNCER_DATABASE_URL

say() { echo "schemathesis.sh: $*" >&2; }

# 1. schemathesis, pinned, in its own venv (reinstalled when the pins change).
stamp=$venv/.requirements
if [[ ! -x $venv/bin/schemathesis ]] || ! cmp -s "$requirements" "$stamp"; then
    say "installing schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
fi

say "building bouncer (debug)"
cargo build --quiet -p bouncer
if [[ $backends == *postgres* ]]; then
    scripts/services.sh
fi

work=$(mktemp -d)
admin_pid=
pg_db=
stop_admin() {
    if [[ -n $admin_pid ]] && kill -0 "$admin_pid" 2>/dev/null; then
        kill -TERM "$admin_pid" 2>/dev/null || true
        wait "$admin_pid" 2>/dev/null || true
    fi
    admin_pid=
}
drop_pg_db() {
    if [[ -n $pg_db ]]; then
        psql -h 127.0.0.1 -U postgres -d postgres -qtAc "DROP DATABASE IF EXISTS $pg_db" >/dev/null 2>&1 || true
    fi
    pg_db=
}
cleanup() {
    stop_admin
    drop_pg_db
    rm -rf "$work"
}
trap cleanup EXIT

# Checks: all of schemathesis' checks about the document and the stateful
# ones — no 5xx; statuses, bodies, content types and headers as
# documented; invalid requests (by the document) rejected and valid ones
# not refused as invalid; a required header left out refused; methods the
# document does not list answered 405 with a true Allow; auth enforced
# where it is declared; a deleted resource gone, a created one there.
# Left out: object_level_authorization, which needs a second user's
# credentials to compare with (the admin API has no per-object owners).
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance,missing_required_header,unsupported_method,allow_header_conformance,ignored_auth,use_after_free,ensure_resource_availability
schemathesis_run() {
    local base=$1 token=$2
    shift 2
    "$venv/bin/schemathesis" --config-file "$root/scripts/schemathesis.toml" \
        run "$base/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks "$checks" \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples "$max_examples" \
        "${generation[@]}" \
        --workers 1 \
        --request-timeout 10 \
        --no-color \
        "$@"
}

# 2. One backend: a fresh database, an admin service on it, the fuzzing.
# (Called in an `||` list, where `set -e` does not apply: every step that
# can fail returns by itself.)
fuzz() {
    local backend=$1
    shift
    local dir=$work/$backend database
    mkdir -p "$dir"
    case $backend in
        sqlite) database=sqlite://$dir/bouncer.db ;;
        postgres)
            pg_db=bouncer_schemathesis_$$_$RANDOM
            psql -h 127.0.0.1 -U postgres -d postgres -qtAc "CREATE DATABASE $pg_db" >/dev/null || return 1
            database=postgres://postgres@127.0.0.1:5432/$pg_db
            ;;
        *) say "unknown backend $backend"; return 1 ;;
    esac
    # The login throttle keeps its defaults: every fuzzer request comes
    # from 127.0.0.1, so /auth/login and /users/me/password soon answer
    # 429, which the document says they do. Argon2 is cheap here: the run
    # tests the API, not the hash cost.
    cat >"$dir/bouncer.yaml" <<EOF
admin:
  listen: 127.0.0.1:0
  database: $database
  keys_dir: $dir/keys
  issuer: http://bouncer.test
  audience: bouncer-test
  key_activation_delay: 0s
  shutdown_grace: 2s
  password:
    hash: { memory_kib: 1024, iterations: 1, parallelism: 1 }
EOF

    local email=schemathesis-admin@example.com password
    password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    printf '%s\n' "$password" | "$bin" user add --config "$dir/bouncer.yaml" \
        --email "$email" --role admin --password-stdin >/dev/null 2>"$dir/user-add.log" \
        || { cat "$dir/user-add.log" >&2; return 1; }

    "$bin" --log-format json admin --config "$dir/bouncer.yaml" 2>"$dir/admin.log" &
    admin_pid=$!
    local addr=
    for _ in $(seq 1 100); do
        addr=$(python3 - "$dir/admin.log" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    if "admin listening" in line:
        event = json.loads(line)
        print(event.get("addr") or event.get("fields", {}).get("addr", ""))
        break
PY
)
        [[ -n $addr ]] && break
        kill -0 "$admin_pid" 2>/dev/null || { cat "$dir/admin.log" >&2; say "bouncer admin exited"; return 1; }
        sleep 0.1
    done
    [[ -n $addr ]] || { cat "$dir/admin.log" >&2; say "bouncer admin did not start listening"; return 1; }
    local base=http://$addr token
    token=$(python3 - "$base" "$email" "$password" <<'PY'
import json, sys, urllib.request
base, email, password = sys.argv[1:]
request = urllib.request.Request(
    base + "/auth/login",
    data=json.dumps({"email": email, "password": password}).encode(),
    headers={"content-type": "application/json"},
)
print(json.load(urllib.request.urlopen(request, timeout=10))["access_token"])
PY
) || { say "$backend: cannot log in as the administrator"; return 1; }

    local status=0
    # POST /auth/logout-all revokes the session of the token every other
    # operation runs with, so it goes last, on its own.
    say "$backend ($base): every operation but POST /auth/logout-all"
    schemathesis_run "$base" "$token" --exclude-path /auth/logout-all "$@" || status=1
    say "$backend ($base): POST /auth/logout-all"
    schemathesis_run "$base" "$token" --include-path /auth/logout-all "$@" || status=1

    # The service must have survived all of it without an error.
    if ! kill -0 "$admin_pid" 2>/dev/null; then
        say "$backend: bouncer admin died during the run"
        tail -n 50 "$dir/admin.log" >&2
        status=1
    fi
    if grep -q '"level":"ERROR"' "$dir/admin.log"; then
        say "$backend: bouncer admin logged errors:"
        grep '"level":"ERROR"' "$dir/admin.log" | tail -n 20 >&2
        status=1
    fi
    stop_admin
    drop_pg_db
    return "$status"
}

started=$SECONDS
failed=()
for backend in $backends; do
    fuzz "$backend" "$@" || failed+=("$backend")
done
if ((${#failed[@]})); then
    say "FAILED on ${failed[*]} ($((SECONDS - started)) s)"
    exit 1
fi
say "passed on $backends ($((SECONDS - started)) s)"
