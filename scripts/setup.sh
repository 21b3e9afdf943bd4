#!/usr/bin/env bash
# Installs what building Bouncer needs and a fresh machine may lack.
# Idempotent: does nothing when everything is present.
set -euo pipefail

need_apt=()
# pingora (the gateway's proxy framework) builds zlib-ng with cmake.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)

if ((${#need_apt[@]})); then
    echo "setup: installing ${need_apt[*]} from Debian packages" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root (or sudo) to install ${need_apt[*]}; install them and re-run" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is missing; install the Rust toolchain (rustup) first" >&2
    exit 1
fi
