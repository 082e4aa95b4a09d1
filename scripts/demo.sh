#!/usr/bin/env bash
# The double payment of docs/design.md problem 1, live: starts turnstiled and three
# payment-service instances (no lock, try-lock, wait-lock), fires 20
# concurrent PUTs at one payment on each, and prints the provider-call counts
# side by side.
#
#   scripts/demo.sh                 # 20 PUTs, provider takes 3 s
#   PUTS=50 PROVIDER_DELAY=1s scripts/demo.sh
#   BIN_DIR=target/release scripts/demo.sh    # already-built turnstiled and payment-service
#
# Needs curl, and cargo unless BIN_DIR names the binaries. Everything runs on free loopback ports and in a temp
# dir that is removed at the end.
set -euo pipefail

PUTS=${PUTS:-20}
PROVIDER_DELAY=${PROVIDER_DELAY:-3s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

command -v curl >/dev/null || { echo "demo: curl is needed" >&2; exit 1; }

if [ -n "${BIN_DIR:-}" ]; then
    # Already-built binaries: no cargo needed.
    BIN=$(cd "$BIN_DIR" && pwd)
    for exe in turnstiled payment-service; do
        [ -x "$BIN/$exe" ] || { echo "demo: BIN_DIR=$BIN_DIR has no executable $exe" >&2; exit 1; }
    done
else
    echo "Building turnstiled and payment-service (debug)..."
    cargo build -q -p turnstile-server --bin turnstiled -p payment-service --bin payment-service
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    BIN=${TARGET_DIR:-$ROOT/target}/debug
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/turnstile-demo.XXXXXX")
PIDS=()
READY=
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background, waits for its ready line
# (the first stdout line, which names the bound addresses) and leaves it in
# $READY. Not called in $(...): the pid must reach PIDS of this shell.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 200); do
        if [ -s "$WORK/$name.out" ] && grep -q listening "$WORK/$name.out"; then
            READY=$(head -n 1 "$WORK/$name.out")
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: $name exited before it was ready:" >&2
            cat "$WORK/$name.log" >&2
            exit 1
        fi
        sleep 0.05 # a script polling a file, not a test
    done
    echo "demo: $name did not start within 10 s" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }

start turnstiled "$BIN/turnstiled" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir '' --log warn
TURNSTILE_ADDR="http://$(echo "$READY" | field grpc)"
echo "turnstiled on $TURNSTILE_ADDR"

# run LABEL FLAGS...: one payment-service instance, one payment, PUTS
# concurrent PUTs. Leaves "calls ok conflict other seconds" in $WORK/LABEL.result.
run() {
    local label=$1
    shift
    local addr id
    start "$label" "$BIN/payment-service" --listen 127.0.0.1:0 --db "$WORK/$label.db" \
        --turnstile-addr "$TURNSTILE_ADDR" --provider-delay "$PROVIDER_DELAY" --log warn "$@"
    addr=$(echo "$READY" | field http)
    id=$(curl -sS -d '{"amount_cents": 4200, "currency": "EUR"}' "http://$addr/payments" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
    echo "  $label: payment-service $* on $addr, payment $id: $PUTS concurrent PUTs..."
    local start_ns end_ns pids=()
    start_ns=$(date +%s%N)
    for i in $(seq 1 "$PUTS"); do
        curl -sS -o /dev/null -w '%{http_code}\n' -X PUT "http://$addr/payments/$id" >"$WORK/$label.put.$i" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    end_ns=$(date +%s%N)
    local calls ok conflict other
    calls=$(curl -sS "http://$addr/provider/charges?payment_id=$id" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
    ok=$(cat "$WORK/$label".put.* | grep -c '^200$' || true)
    conflict=$(cat "$WORK/$label".put.* | grep -c '^409$' || true)
    other=$((PUTS - ok - conflict))
    echo "$calls $ok $conflict $other $(((end_ns - start_ns) / 1000000))" >"$WORK/$label.result"
}

echo
echo "$PUTS concurrent PUT /payments/{id} on one payment; the provider takes $PROVIDER_DELAY per call."
run no-lock --no-lock
run try-lock --lock-mode try
run wait-lock --lock-mode wait --lock-wait 60s

read -r n_calls n_ok n_conf n_other n_ms <"$WORK/no-lock.result"
read -r t_calls t_ok t_conf t_other t_ms <"$WORK/try-lock.result"
read -r w_calls w_ok w_conf w_other w_ms <"$WORK/wait-lock.result"

echo
printf '%-22s %12s %16s %17s\n' "" "--no-lock" "--lock-mode try" "--lock-mode wait"
printf '%-22s %12s %16s %17s\n' "provider calls" "$n_calls" "$t_calls" "$w_calls"
printf '%-22s %12s %16s %17s\n' "answers 200 (PAID)" "$n_ok" "$t_ok" "$w_ok"
printf '%-22s %12s %16s %17s\n' "answers 409 (locked)" "$n_conf" "$t_conf" "$w_conf"
printf '%-22s %12s %16s %17s\n' "other answers" "$n_other" "$t_other" "$w_other"
printf '%-22s %12s %16s %17s\n' "wall time (ms)" "$n_ms" "$t_ms" "$w_ms"
echo
if [ "$n_calls" -gt 1 ] && [ "$t_calls" -eq 1 ] && [ "$w_calls" -eq 1 ]; then
    echo "Without the lock the card was charged $n_calls times for one payment; with it, once."
else
    echo "demo: unexpected counts (see above)" >&2
    exit 1
fi
