#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for a while: scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]
#
# Default: 20 s per target, targets `requests` and `core_ops` (see fuzz/README.md).
# Works on a fresh machine with the stable toolchain: installs cargo-fuzz from
# crates.io when missing (about 1 min), and a C++ compiler (libFuzzer) with
# apt when missing (no protoc: every proto compiles with protox). No nightly: the
# targets are built with `--sanitizer none`, which needs no unstable flag
# (the workspace denies unsafe code, so AddressSanitizer would add little);
# FUZZ_SANITIZER=address asks for ASan, which needs a nightly default toolchain
# (or RUSTC_BOOTSTRAP=1 on stable: works, but is not for CI).
#
# Each run starts from the committed corpus (fuzz/corpus/<target>, read only)
# plus what earlier local runs found (fuzz/corpus-work/<target>, not committed).
# Exits non-zero if any target crashes, and prints the crashing input's path,
# its bytes (base64) and the command that reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(requests core_ops)
sanitizer=${FUZZ_SANITIZER:-none}
cargo_fuzz_version=0.13.2

case $secs in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS-PER-TARGET] [TARGET...]" >&2; exit 2 ;;
esac

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
if ! command -v c++ >/dev/null 2>&1; then
    echo "== installing g++ (libfuzzer-sys builds libFuzzer)"
    apt_install g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== cargo install cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

echo "== cargo fuzz build --sanitizer $sanitizer ($(cargo fuzz --version))"
cargo fuzz build --sanitizer "$sanitizer"

failed=()
for t in "${targets[@]}"; do
    work="$root/fuzz/corpus-work/$t"
    seeds="$root/fuzz/corpus/$t"
    artifacts="$root/fuzz/artifacts/$t"
    log="$root/fuzz/target/fuzz-$t.log"
    mkdir -p "$work" "$seeds" "$artifacts"
    marker="$root/fuzz/target/.fuzz-$t.start"
    touch "$marker"
    echo "== fuzzing $t for ${secs}s (log: ${log#"$root"/})"
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$t" "$work" "$seeds" -- \
        -max_total_time="$secs" -timeout=25 -print_final_stats=1 >"$log" 2>&1 || status=$?
    # The last status line and the totals: executions, coverage, corpus size.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' "$log" | tr '\n' ' ' || true
    echo
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "!! $t FAILED (exit $status). Output:"
        grep -v -E '^(INFO|#[0-9]+|WARNING: Failed to find function)' "$log" | sed -n '1,80p'
        crash=$(find "$artifacts" -type f -newer "$marker" | head -n 1)
        if [ -n "$crash" ]; then
            echo "!! crashing input: ${crash#"$root"/} ($(wc -c <"$crash") bytes)"
            echo "!! base64: $(head -c 4096 "$crash" | base64 -w0)"
            echo "!! reproduce: cargo fuzz run --sanitizer $sanitizer $t ${crash#"$root"/}"
        fi
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: ok (${#targets[@]} targets, ${secs}s each)"
