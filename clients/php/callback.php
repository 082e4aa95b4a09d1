<?php
// Problem 3 of docs/design.md: the "order placed" callback of an at-least-once
// queue, as the PHP service had it: read the order, do the slow part, bump the
// statistics, mark the order. Run it under the turnstile CLI, which holds the
// lease `order:ID` while this script runs and passes its fencing token:
//
//     turnstile lock order:42 -- php callback.php orders.db 42
//
// With TURNSTILE_FENCING_TOKEN set, the write is fenced: the order takes the
// token only if its fence is smaller, in the same transaction as the count, so
// a delivery whose lease passed to a newer holder counts nothing.
// Without it (no lock), the old behaviour: read, then write unconditionally.
//
// Prints one word: counted, duplicate, or fenced. Exit 0.
// CALLBACK_WORK_MS: the slow part (default 200). CALLBACK_BARRIER_DIR (tests
// only): after reading, wait until CALLBACK_BARRIER_N deliveries have read, so
// the race without the lock shows without depending on timing.

if ($argc !== 3) {
    fwrite(STDERR, "usage: php callback.php DB ORDER_ID\n");
    exit(2);
}
[$_, $dbPath, $orderId] = $argv;
$orderId = (int) $orderId;
$token = getenv('TURNSTILE_FENCING_TOKEN');

$db = new PDO("sqlite:$dbPath", null, null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
$db->exec('PRAGMA busy_timeout = 10000');

$read = $db->prepare('SELECT status FROM orders WHERE id = ?');
$read->execute([$orderId]);
$status = $read->fetchColumn();
$read->closeCursor(); // an open statement would keep SQLite's shared lock and block the writers
if ($status !== 'CREATED') {
    echo "duplicate\n";
    exit(0);
}

$barrier = getenv('CALLBACK_BARRIER_DIR');
if ($barrier !== false && $barrier !== '') {
    touch("$barrier/" . getmypid());
    $deadline = microtime(true) + 10;
    while (count(glob("$barrier/*")) < (int) getenv('CALLBACK_BARRIER_N') && microtime(true) < $deadline) {
        usleep(10000);
    }
}
usleep(1000 * (int) (getenv('CALLBACK_WORK_MS') ?: 200)); // the slow part of the callback

$db->exec('BEGIN IMMEDIATE');
if ($token !== false && $token !== '') {
    // Tokens are uint64; PHP ints are signed 64-bit, and SQLite's too: bind as given.
    $claim = $db->prepare(
        "UPDATE orders SET status = 'COUNTED', fence = :t WHERE id = :id AND status = 'CREATED' AND fence < :t"
    );
    $claim->execute([':t' => $token, ':id' => $orderId]);
    if ($claim->rowCount() !== 1) {
        $fence = $db->query("SELECT fence FROM orders WHERE id = $orderId")->fetchColumn();
        $db->exec('ROLLBACK');
        echo ((int) $fence > (int) $token ? "fenced" : "duplicate"), "\n";
        exit(0);
    }
} else {
    $db->prepare("UPDATE orders SET status = 'COUNTED' WHERE id = ?")->execute([$orderId]);
}
$db->exec("UPDATE stats SET value = value + 1 WHERE name = 'orders_placed'");
$db->exec('COMMIT');
echo "counted\n";
