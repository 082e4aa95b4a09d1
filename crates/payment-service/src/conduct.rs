//! Conducting a payment (`PUT /payments/{id}`): the read–charge–write
//! section of docs/design.md problem 1, under the payment's lease.
//!
//! Under a lease with token `t` the PUT touches the row twice (see
//! [`crate::store`]): it *claims* it before charging (`fence = t` where
//! `fence < t` and EMPTY), and writes PAID after charging only where the row
//! still carries `t`. The claim is what lets the final write tell "nobody came
//! after me" from "a newer holder took over while I charged", in either order
//! of the two holders' final writes.

use turnstile_client::LostReason;

use crate::api::App;
use crate::error::ApiError;
use crate::lock::AcquireError;
use crate::store::{self, Claim, Payment, PaymentState, WriteOutcome};

/// The lock key of a payment.
pub(crate) fn lock_key(id: i64) -> String {
    format!("payment:{id}")
}

/// Takes the payment's lease, conducts it, and releases the lease.
///
/// Under the lease: claim the payment with the lease's fencing token; if it
/// is already PAID answer it as it is (the waiters of `--lock-mode wait` land
/// here); otherwise charge it at the provider and write PAID, fenced by the
/// claim. Under `--no-lock` none of that: read, charge, write.
pub(crate) async fn conduct(app: App, id: i64) -> Result<Payment, ApiError> {
    let held = app.locking.acquire(&lock_key(id)).await.map_err(|e| match e {
        AcquireError::Locked { expires_in } => ApiError::Locked { expires_in },
        AcquireError::Unavailable(e) => ApiError::LockUnavailable(e),
    })?;
    let result = match held.token() {
        Some(token) => conduct_fenced(&app, id, token, || held.lost_reason()).await,
        None => conduct_unlocked(&app, id).await,
    };
    held.release().await;
    result
}

/// The PUT under the lease with `token`; `lost` says whether the lease is
/// known lost by now.
async fn conduct_fenced(
    app: &App,
    id: i64,
    token: u64,
    lost: impl Fn() -> Option<LostReason>,
) -> Result<Payment, ApiError> {
    // 1. Claim the row before charging. A PUT that cannot claim it charges
    //    nothing.
    let payment = match app.store.run(move |c| store::claim(c, id, token)).await? {
        Claim::Claimed(payment) => payment,
        Claim::AlreadyPaid(payment) => {
            tracing::info!(payment = id, token, "already PAID: nothing to charge");
            return Ok(payment);
        }
        Claim::Superseded { current } => {
            tracing::warn!(payment = id, token, current, "a newer lock holder owns the payment: not charging");
            return Err(ApiError::Superseded { id, token, current });
        }
        Claim::Missing => return Err(ApiError::NotFound { id }),
    };

    // 2. Do not charge under a lease already known lost: a newer holder may
    //    be charging right now. This only narrows the window (the process can
    //    stall right after the check); the fence in step 4 is what decides.
    if let Some(reason) = lost() {
        tracing::warn!(payment = id, token, %reason, "lease lost before charging: not charging");
        return Err(ApiError::LeaseLost { id, token, reason });
    }

    // 3. Charge. Deliberately not raced against `guard.lost()`: the charge is
    //    booked the moment the request reaches the provider, so abandoning the
    //    call would not undo it, only lose the charge id that must then be
    //    refunded. The call runs to its end and step 4 decides what stands.
    let charge_id = app.provider.charge(&payment).await?;

    // 4. The fenced write: PAID only if the row still carries our claim. Done
    //    even when the lease is lost by now: if nobody claimed the row since,
    //    recording our charge is exactly right (a later PUT finds it PAID).
    let written = {
        let charge_id = charge_id.clone();
        app.store.run(move |c| store::mark_paid_fenced(c, id, &charge_id, token)).await?
    };
    match written {
        WriteOutcome::Applied(paid) => {
            tracing::info!(payment = id, %charge_id, token, "payment PAID");
            Ok(paid)
        }
        WriteOutcome::FencedOut { current } => {
            tracing::error!(
                payment = id, %charge_id, token, current,
                "fenced out: our lease passed to a newer holder while we charged; charge {charge_id} needs a refund"
            );
            Err(ApiError::FencedOut { id, token, current, charge_id })
        }
        WriteOutcome::Missing => Err(ApiError::NotFound { id }),
    }
}

/// `--no-lock`, the broken version kept for the demo: read, charge, and
/// write whatever the row says by then. Whoever writes last wins.
async fn conduct_unlocked(app: &App, id: i64) -> Result<Payment, ApiError> {
    let payment = app.store.run(move |c| store::get_payment(c, id)).await?.ok_or(ApiError::NotFound { id })?;
    if payment.state == PaymentState::Paid {
        tracing::info!(payment = id, "already PAID: nothing to charge");
        return Ok(payment);
    }
    let charge_id = app.provider.charge(&payment).await?;
    let written = {
        let charge_id = charge_id.clone();
        app.store.run(move |c| store::mark_paid_unfenced(c, id, &charge_id)).await?
    };
    if !written {
        return Err(ApiError::NotFound { id });
    }
    tracing::info!(payment = id, %charge_id, "payment PAID (no lock)");
    app.store.run(move |c| store::get_payment(c, id)).await?.ok_or(ApiError::NotFound { id })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::lock::Locking;
    use crate::provider::Provider;
    use crate::store::Store;

    fn app() -> App {
        let store = Store::in_memory().expect("in-memory store");
        App { provider: Provider::new(store.clone(), Duration::ZERO), store, locking: Arc::new(Locking::Off) }
    }

    async fn charges(app: &App, id: i64) -> usize {
        app.store.run(move |c| store::charges(c, Some(id))).await.expect("charges").len()
    }

    #[tokio::test]
    async fn a_lease_known_lost_after_the_claim_charges_nothing() {
        let app = app();
        let p = app.store.run(|c| store::create_payment(c, 700, "EUR")).await.expect("create");

        let lost = conduct_fenced(&app, p.id, 5, || Some(LostReason::NotRenewed)).await;
        assert!(matches!(lost, Err(ApiError::LeaseLost { token: 5, .. })), "{lost:?}");
        assert_eq!(charges(&app, p.id).await, 0, "charged under a lost lease");

        // The next holder claims over the abandoned claim and pays.
        let paid = conduct_fenced(&app, p.id, 6, || None).await.expect("conduct");
        assert_eq!((paid.state, paid.fence), (PaymentState::Paid, 6));
        assert_eq!(charges(&app, p.id).await, 1);
    }

    #[tokio::test]
    async fn an_older_holder_neither_charges_nor_writes() {
        let app = app();
        let p = app.store.run(|c| store::create_payment(c, 700, "EUR")).await.expect("create");
        // A newer holder (token 9) has claimed the row and is charging.
        let claimed = app.store.run(move |c| store::claim(c, p.id, 9)).await.expect("claim");
        assert!(matches!(claimed, Claim::Claimed(_)));

        let stale = conduct_fenced(&app, p.id, 4, || None).await;
        assert!(matches!(stale, Err(ApiError::Superseded { token: 4, current: 9, .. })), "{stale:?}");
        assert_eq!(charges(&app, p.id).await, 0);
    }

    #[tokio::test]
    async fn a_paid_payment_is_answered_as_it_is() {
        let app = app();
        let p = app.store.run(|c| store::create_payment(c, 700, "EUR")).await.expect("create");
        let first = conduct_fenced(&app, p.id, 3, || None).await.expect("conduct");
        let again = conduct_fenced(&app, p.id, 8, || None).await.expect("conduct");
        assert_eq!(again, first);
        assert_eq!(charges(&app, p.id).await, 1);
    }
}
