#!/usr/bin/env bash
# The whole test suite: unit, per-crate integration (real PostgreSQL) and
# end-to-end tests of the real binary. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
cargo test --workspace "$@"
