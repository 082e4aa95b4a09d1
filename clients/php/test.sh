#!/usr/bin/env bash
# Problem 3 with PHP through the turnstile CLI: two deliveries of the same
# order callback, run at once, count the order once under `turnstile lock`;
# without it, twice (the bug). Needs php-cli with pdo_sqlite, sqlite3 is not
# needed (PHP creates the database). Binaries: $TURNSTILED and $TURNSTILE
# (default: the workspace's target/debug/).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
TURNSTILED="${TURNSTILED:-$root/target/debug/turnstiled}"
TURNSTILE="${TURNSTILE:-$root/target/debug/turnstile}"
tmp="$(mktemp -d)"
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

mkfifo "$tmp/out"
"$TURNSTILED" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir '' >"$tmp/out" 2>"$tmp/server.log" &
server_pid=$!
exec 3<"$tmp/out"
read -r -t 30 first <&3
exec 3<&-  # the server's later stdout lines go nowhere; it logs to stderr
[[ "$first" =~ grpc=([^ ]+) ]] || { echo "unexpected first line: $first" >&2; exit 1; }
addr="${BASH_REMATCH[1]}"
case "$addr" in http://*|https://*) ;; *) addr="http://$addr" ;; esac

passed=0 failed=0
check() { # NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then
        passed=$((passed + 1)); echo "ok - $1"
    else
        failed=$((failed + 1)); echo "not ok - $1: expected [$2], got [$3]"
    fi
}

new_db() { # PATH ORDER_ID
    php -r '
        $db = new PDO("sqlite:" . $argv[1]);
        $db->exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, fence INTEGER NOT NULL DEFAULT 0)");
        $db->exec("CREATE TABLE stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL)");
        $db->exec("INSERT INTO stats VALUES (\"orders_placed\", 0)");
        $db->exec("INSERT INTO orders (id, status) VALUES (" . (int) $argv[2] . ", \"CREATED\")");
    ' "$1" "$2"
}
count() { php -r '$db = new PDO("sqlite:" . $argv[1]); echo $db->query("SELECT value FROM stats")->fetchColumn();' "$1"; }

# 1. Under the lock: two deliveries at once count the order once.
db="$tmp/locked.db"; new_db "$db" 7
pids=()
for i in 1 2; do
    "$TURNSTILE" --addr "$addr" lock --ttl 10s order:7 -- php "$here/callback.php" "$db" 7 >"$tmp/locked.$i" &
    pids+=($!)
done
wait "${pids[@]}"
check "two deliveries under the lock count the order once" 1 "$(count "$db")"
check "one delivery counted, the other saw a duplicate" "counted duplicate" "$(sort "$tmp"/locked.? | tr '\n' ' ' | sed 's/ $//')"

# 2. Without the lock (the bug): both read CREATED before either writes, both count.
db="$tmp/unlocked.db"; new_db "$db" 8
mkdir "$tmp/barrier"
pids=()
for i in 1 2; do
    CALLBACK_BARRIER_DIR="$tmp/barrier" CALLBACK_BARRIER_N=2 CALLBACK_WORK_MS=0 \
        php "$here/callback.php" "$db" 8 >"$tmp/unlocked.$i" &
    pids+=($!)
done
wait "${pids[@]}"
check "without the lock the same two deliveries count it twice" 2 "$(count "$db")"

# 3. The fence: a delivery holding an older token than the order's fence counts nothing.
db="$tmp/fenced.db"; new_db "$db" 9
php -r '$db = new PDO("sqlite:" . $argv[1]); $db->exec("UPDATE orders SET fence = 100 WHERE id = 9");' "$db"
out="$(TURNSTILE_FENCING_TOKEN=50 CALLBACK_WORK_MS=0 php "$here/callback.php" "$db" 9)"
check "a stale token is fenced out" "fenced 0" "$out $(count "$db")"

# 4. The token reaches the script: the order keeps the lease's fencing token.
db="$tmp/token.db"; new_db "$db" 10
"$TURNSTILE" --addr "$addr" lock order:10 -- php "$here/callback.php" "$db" 10 >/dev/null
fence="$(php -r '$db = new PDO("sqlite:" . $argv[1]); echo $db->query("SELECT fence FROM orders WHERE id = 10")->fetchColumn();' "$db")"
check "the order carries the lease's fencing token" yes "$([ "$fence" -gt 0 ] && echo yes || echo "no ($fence)")"

echo "php: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
