'use strict';
// Runs the payment API: PORT (default 8080), TURNSTILE_ADDR (default
// 127.0.0.1:7700), DB (default payments.db), LOCK_MODE try|wait|off,
// PROVIDER_DELAY_MS (default 3000).

const { Client } = require('@turnstile/client');
const { createApp } = require('./app');
const { Store } = require('./store');
const { Provider } = require('./provider');

async function main() {
  const store = await Store.open(process.env.DB || 'payments.db');
  const provider = new Provider(store, { delayMs: Number(process.env.PROVIDER_DELAY_MS || 3000) });
  const lockMode = process.env.LOCK_MODE || 'try';
  const client = lockMode === 'off' ? undefined : new Client(process.env.TURNSTILE_ADDR || '127.0.0.1:7700');
  const server = createApp({ store, provider, client, lockMode }).listen(Number(process.env.PORT || 8080), '127.0.0.1', () =>
    console.log(`payment-api listening on http://127.0.0.1:${server.address().port} (lock mode ${lockMode})`),
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
