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
