#!/usr/bin/env bash
# Builds Bouncer (release) and runs it. Without arguments it runs `bouncer up`
# on the embedded default configuration: admin + gateway + echo upstream in
# one process, SQLite under data/. With arguments, runs that subcommand
# (e.g. `scripts/run.sh user add ...`).
#
# BOUNCER_BIN=path/to/bouncer skips the build and runs that binary instead
# (the README test uses it so a fresh clone need not be compiled again).
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# == 0)); then
    set -- up --config config/bouncer.yaml
fi
if [[ -n ${BOUNCER_BIN:-} ]]; then
    exec "$BOUNCER_BIN" "$@"
fi
scripts/setup.sh
exec cargo run --release --quiet -p bouncer -- "$@"
