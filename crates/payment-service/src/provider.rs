//! The simulated third-party payment provider: slow (`--provider-delay`,
//! 3 s by default) and counted, so a double charge shows up as two rows of
//! its ledger (`GET /provider/charges`).

use std::time::Duration;

use crate::store::{self, Payment, Store, StoreError};

/// An in-process stand-in for a card processor's "charge" call.
#[derive(Clone)]
pub(crate) struct Provider {
    store: Store,
    delay: Duration,
}

impl Provider {
    /// A provider that takes `delay` per charge and keeps its ledger in `store`.
    pub(crate) fn new(store: Store, delay: Duration) -> Provider {
        Provider { store, delay }
    }

    /// Charges the payment's amount and returns the charge id. The charge is
    /// booked the moment the request reaches the provider; the answer comes
    /// `delay` later. A real provider would take an idempotency key too: this
    /// one deliberately does not, so that the lock is what prevents a second
    /// charge.
    pub(crate) async fn charge(&self, payment: &Payment) -> Result<String, StoreError> {
        let (id, amount, currency) = (payment.id, payment.amount_cents, payment.currency.clone());
        let charge_id = self.store.run(move |c| store::record_charge(c, id, amount, &currency)).await?;
        tracing::info!(payment = id, %charge_id, "provider: card charged");
        // The provider's latency: the window in which a second PUT can slip in.
        tokio::time::sleep(self.delay).await;
        Ok(charge_id)
    }
}
