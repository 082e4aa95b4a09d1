#!/usr/bin/env bash
# Runs the tests and examples of the clients in other languages (clients/):
# the Node.js package and its Express payment example, the Python example, and
# the PHP order callback under the turnstile CLI, each against a real turnstiled.
# Installs what is missing: Node.js/npm, php-cli with SQLite and python3-venv
# from Debian's packages (apt); npm packages from the lockfiles (npm ci);
# grpcio from PyPI into a venv (scripts/lib/venv.sh). Nothing here compiles
# native code for the clients: the Node side is pure JavaScript and
# WebAssembly (sql.js), grpcio comes as manylinux wheels (sdists are refused
# below), PHP uses Debian's pdo_sqlite. Only cargo builds native code
# (turnstiled and the CLI), with the C compiler its own toolchain needs.
# Written for Debian bookworm's Node 18 and npm 9 (npm 9.2 checked; Node 18 by
# its docs, not run here). Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

# ---- system packages ----
need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v php >/dev/null 2>&1 || need+=(php-cli)
if ! command -v php >/dev/null 2>&1 || ! php -m 2>/dev/null | grep -qx pdo_sqlite; then need+=(php-sqlite3); fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# shellcheck source=lib/apt.sh
. "$root/scripts/lib/apt.sh"
apt_install "the client tests" ${need[@]+"${need[@]}"}
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
    echo "Node.js $(node --version) is too old: the client needs 18 or later" >&2
    exit 1
fi

# ---- binaries under test ----
# One cargo call: two calls resolve shared dependencies (rustls, tonic) with
# different features and rebuild each other's, about a minute per run.
cargo build -q -p turnstile-server --bin turnstiled -p turnstile-client --bin turnstile
target="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
export TURNSTILED="${TURNSTILED:-$target/debug/turnstiled}"
export TURNSTILE="${TURNSTILE:-$target/debug/turnstile}"

# ---- dependencies: npm ci when the lockfile changed since the last install ----
npm_ci() { # DIR
    local dir="$1" stamp="$1/node_modules/.turnstile-lock-sha"
    local sum
    sum="$(sha256sum "$dir/package-lock.json" "$dir/package.json" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
        echo "npm ci in ${dir#"$root"/}" >&2
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$sum" >"$stamp"
    fi
}
npm_ci "$root/clients/node"
npm_ci "$root/clients/node/examples/payment-api"

# shellcheck source=lib/venv.sh
. "$root/scripts/lib/venv.sh"
pyvenv="$cache/clients-python"
# Wheels only: an sdist of grpcio would need g++ and build for many minutes.
PIP_ONLY_BINARY=:all: venv "$pyvenv" "$(grep -v '^#' clients/python/requirements.txt | tr '\n' ' ' | sed 's/ *$//')"

# ---- the tests ----
failures=()
run() { # NAME DIR CMD...
    local name="$1" dir="$2"
    shift 2
    echo "==== $name" >&2
    if ! (cd "$dir" && "$@"); then
        failures+=("$name")
    fi
}
run "node client" clients/node sh -c 'node --test test/*.test.js test/*.test.mjs'
run "node payment-api example" clients/node/examples/payment-api sh -c 'node --test test/*.test.js'
run "python example" clients/python "$pyvenv/bin/python" -m unittest -v
run "php order callback" clients/php bash ./test.sh

if [ ${#failures[@]} -gt 0 ]; then
    echo "client tests FAILED: ${failures[*]}" >&2
    exit 1
fi
echo "client tests: all passed" >&2
