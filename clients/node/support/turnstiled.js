'use strict';
// Starts a real turnstiled for a test file: the binary from $TURNSTILED
// (default: the workspace's target/debug/turnstiled), on ports the kernel picks,
// without state. Its first stdout line names the addresses.

const path = require('node:path');
const { spawn } = require('node:child_process');
const readline = require('node:readline');
const { setTimeout: sleep } = require('node:timers/promises');

const BIN = process.env.TURNSTILED || path.resolve(__dirname, '..', '..', '..', 'target', 'debug', 'turnstiled');

async function startServer(extraArgs = []) {
  const child = spawn(
    BIN,
    ['--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--data-dir', '', ...extraArgs],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  // Never outlive the test process, even when it ends without test.after.
  const reap = () => child.kill('SIGKILL');
  process.once('exit', reap);
  child.once('exit', () => process.removeListener('exit', reap));
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 65536) stderr = stderr.slice(-32768);
  });
  const lines = readline.createInterface({ input: child.stdout });
  const first = await new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`turnstiled exited (${code}) before listening: ${stderr}`)));
    lines.once('line', resolve);
  });
  lines.on('line', () => {}); // keep draining
  const m = /turnstiled listening grpc=(\S+) http=(\S+)/.exec(first);
  if (!m) throw new Error(`unexpected first line from turnstiled: ${first}`);
  return {
    grpc: m[1].replace(/^https?:\/\//, ''),
    http: m[2],
    child,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Polls `check` until it returns a truthy value, or fails after `ms` (a deadline, not a state wait). */
async function eventually(check, what, ms = 20_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

module.exports = { startServer, eventually, BIN };
