#!/usr/bin/env bash
# Builds the release binary and runs the admin load benchmark.
# Usage: benches/run-admin.sh [SECONDS_PER_PHASE]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
cargo build --release -q -p bouncer
cargo bench -q -p bouncer-benches --bench admin_load -- "${1:-10}"
