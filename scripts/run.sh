#!/usr/bin/env bash
# Builds Bouncer (release) and runs it. Without arguments it runs the admin
# service on the embedded default configuration (SQLite under data/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if (($# == 0)); then
    set -- admin --config config/bouncer.yaml
fi
exec cargo run --release --quiet -p bouncer -- "$@"
