#!/usr/bin/env bash
# Builds Bouncer (release) and runs it. Without arguments it runs `bouncer up`
# on the embedded default configuration: admin + gateway + echo upstream in
# one process, SQLite under data/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if (($# == 0)); then
    set -- up --config config/bouncer.yaml
fi
exec cargo run --release --quiet -p bouncer -- "$@"
