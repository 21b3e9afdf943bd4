#!/usr/bin/env bash
# Makes sure the PostgreSQL and Redis the tests use answer on 127.0.0.1,
# starting the machine's own instances when they are down. Fails loudly:
# tests never skip silently for want of a database.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { [[ $(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }

wait_for() {
    local what=$1 check=$2
    for _ in $(seq 1 60); do
        if $check; then return 0; fi
        sleep 0.5
    done
    echo "services: $what did not come up on 127.0.0.1" >&2
    exit 1
}

if ! pg_up; then
    echo "services: starting PostgreSQL" >&2
    command -v pg_ctlcluster >/dev/null || { echo "services: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
    wait_for "PostgreSQL (5432)" pg_up
fi

if ! redis_up; then
    echo "services: starting Redis" >&2
    command -v redis-server >/dev/null || { echo "services: Redis is not installed (apt-get install redis-server)" >&2; exit 1; }
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_for "Redis (6379)" redis_up
fi

# The tests connect as postgres with trust auth; say so clearly if not.
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
    echo "services: cannot connect to PostgreSQL as user postgres on 127.0.0.1:5432 (trust auth expected)" >&2
    exit 1
fi
echo "services: PostgreSQL and Redis are up" >&2
