//! Conducting a payment (`PUT /payments/{id}`): the read–charge–write
//! section of DESIGN.md problem 1, under the payment's lease.

use crate::api::App;
use crate::error::ApiError;
use crate::lock::AcquireError;
use crate::store::{self, Payment, PaymentState, WriteOutcome};

/// The lock key of a payment.
pub(crate) fn lock_key(id: i64) -> String {
    format!("payment:{id}")
}

/// Takes the payment's lease, conducts it, and releases the lease.
///
/// Under the lease: read the payment; if it is already PAID answer it as it
/// is (the waiters of `--lock-mode wait` land here); otherwise charge it at
/// the provider and write PAID with the lease's fencing token.
pub(crate) async fn conduct(app: App, id: i64) -> Result<Payment, ApiError> {
    let held = app.locking.acquire(&lock_key(id)).await.map_err(|e| match e {
        AcquireError::Locked { expires_in } => ApiError::Locked { expires_in },
        AcquireError::Unavailable(e) => ApiError::LockUnavailable(e),
    })?;
    let token = held.token();
    let result = conduct_locked(&app, id, token).await;
    held.release().await;
    result
}

async fn conduct_locked(app: &App, id: i64, token: Option<u64>) -> Result<Payment, ApiError> {
    let payment = app.store.run(move |c| store::get_payment(c, id)).await?.ok_or(ApiError::NotFound { id })?;
    if payment.state == PaymentState::Paid {
        tracing::info!(payment = id, "already PAID: nothing to charge");
        return Ok(payment);
    }
    let charge_id = app.provider.charge(&payment).await?;
    let written = {
        let charge_id = charge_id.clone();
        match token {
            // No check of `guard.is_valid()` first: the process can pause
            // between such a check and the write. The fence is in the write.
            Some(token) => app.store.run(move |c| store::mark_paid_fenced(c, id, &charge_id, token)).await?,
            // --no-lock: whoever writes last wins.
            None => match app.store.run(move |c| store::mark_paid_unfenced(c, id, &charge_id)).await? {
                true => WriteOutcome::Applied,
                false => WriteOutcome::Missing,
            },
        }
    };
    match written {
        WriteOutcome::Applied => {}
        WriteOutcome::Missing => return Err(ApiError::NotFound { id }),
        WriteOutcome::FencedOut { current } => {
            let token = token.unwrap_or(0);
            tracing::error!(
                payment = id, %charge_id, token, current,
                "fenced out: our lease passed to a newer holder while we charged; charge {charge_id} needs a refund"
            );
            return Err(ApiError::FencedOut { id, token, current });
        }
    }
    tracing::info!(payment = id, %charge_id, token, "payment PAID");
    app.store.run(move |c| store::get_payment(c, id)).await?.ok_or(ApiError::NotFound { id })
}
