#!/usr/bin/env bash
# Runs the whole turnstile test suite: every Rust crate, then the clients in
# other languages (scripts/test-clients.sh: Node.js, Python, PHP). Installs
# what the tests need when it is missing: etcd (the etcd backend's tests start
# a real one) and promtool (Debian's prometheus package: the metrics
# exposition is checked with it) here, Node.js/npm, php-cli and python3-venv
# there. Debian/Ubuntu apt. No protoc: every proto compiles with protox.
# Arguments go to `cargo test`; TURNSTILE_SKIP_CLIENTS=1 skips the clients.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
apt_install "the tests" ${need[@]+"${need[@]}"}

# Unit, integration and doc tests of every crate; examples are built too.
# (Benchmarks are compiled by CI's clippy and run with `cargo bench`.)
cargo test --workspace "$@"

if [ "${TURNSTILE_SKIP_CLIENTS:-0}" != 1 ]; then
    ./scripts/test-clients.sh
fi
