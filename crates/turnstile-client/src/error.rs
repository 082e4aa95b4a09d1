//! [`Error`], the one error type of the client, [`LostReason`], and the one
//! mapping from a gRPC `Status` to an [`Error`].

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Why a lease is known to be lost (see [`LockGuard::lost`](crate::LockGuard::lost)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The coordinator answered that the lease has ended: it expired on the
    /// coordinator's side, someone released it with its fencing token, an
    /// operator force-released it (`turnstile release --force`), or the
    /// coordinator restarted after a crash. Another owner may hold the key now.
    Ended,
    /// The lease's validity (send time of the last successful grant or renew,
    /// plus its TTL, on the local monotonic clock) passed without a successful
    /// renew, typically because the coordinator could not be reached.
    NotRenewed,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LostReason::Ended => "the coordinator says the lease has ended",
            LostReason::NotRenewed => "the lease was not renewed in time",
        })
    }
}

/// Everything that can go wrong talking to turnstile. Each variant carries
/// the fields a caller needs to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by someone else and was not obtained (a try-lock, or a
    /// wait that ran out). `holder` and `expires_in` describe the holder as of
    /// the last answer; both are `None` when the key was free at that moment.
    #[error("{key} is held by {}{}", holder.as_deref().unwrap_or("nobody"), expires_in.map(|d| format!(" (expires in {})", crate::human_duration(d))).unwrap_or_default())]
    Contended {
        /// The key asked for.
        key: String,
        /// The holder's owner string.
        holder: Option<String>,
        /// Time left on the holder's lease.
        expires_in: Option<Duration>,
        /// Acquire calls queued on the key.
        waiters: u32,
    },
    /// The lease ended before the work under it finished (or before it was
    /// released): another owner may have held the key meanwhile.
    #[error("lease on {key} (fencing token {fencing_token}) lost: {reason}")]
    LeaseLost {
        /// The key of the lease.
        key: String,
        /// The fencing token of the lost lease.
        fencing_token: u64,
        /// How the loss became known.
        reason: LostReason,
    },
    /// The coordinator could not be reached, is shutting down, or is
    /// recovering after a crash (its message says how long).
    #[error("coordinator unavailable: {message}")]
    Unavailable {
        /// The server's or the transport's message.
        message: String,
    },
    /// A call got no answer within the per-call timeout
    /// ([`ClientBuilder::call_timeout`](crate::ClientBuilder::call_timeout)).
    #[error("{operation} got no answer within {}", crate::human_duration(*after))]
    Timeout {
        /// The RPC, e.g. `Acquire`.
        operation: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// A request field was refused, by this client or by the coordinator.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field at fault, e.g. `key`, `ttl`, `owner`, `addr`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A limit of the coordinator was reached: waiters per key, total leases,
    /// or result size.
    #[error("coordinator limit reached: {message}")]
    ResourceExhausted {
        /// The server's message, naming the limit.
        message: String,
    },
    /// The coordinator did not accept the credentials (bearer token).
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's message.
        message: String,
    },
    /// The credentials do not allow this key.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's message.
        message: String,
    },
    /// Any other gRPC status.
    #[error("{code:?}: {message}")]
    Rpc {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The coordinator answered without a field the protocol promises.
    #[error("malformed answer from the coordinator: {what}")]
    Protocol {
        /// What was missing or wrong.
        what: &'static str,
    },
    /// The endpoint could not be set up (bad address or TLS settings).
    #[error("cannot set up the connection to {addr}: {source}")]
    Connect {
        /// The address given.
        addr: String,
        /// The transport's error.
        source: tonic::transport::Error,
    },
    /// The computation given to [`Client::fetch`](crate::Client::fetch) failed.
    #[error("computation failed: {source}")]
    Compute {
        /// The computation's own error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A result of [`Client::fetch_json`](crate::Client::fetch_json) could not
    /// be decoded as JSON. (A value that cannot be encoded is the computing
    /// caller's [`Error::Compute`].)
    #[error("JSON value for {key}: {source}")]
    Json {
        /// The key of the fetch.
        key: String,
        /// The serde error.
        source: serde_json::Error,
    },
}

impl Error {
    /// Maps a status to an error. Statuses made by the
    /// transport (no answer from the server) become [`Error::Unavailable`].
    pub(crate) fn from_status(status: Status) -> Error {
        let message = status.message().to_owned();
        if is_transport(&status) {
            return Error::Unavailable { message: transport_message(&status) };
        }
        match status.code() {
            Code::InvalidArgument => {
                // The server names the field in a google.rpc.BadRequest; the
                // message text is read only from servers that send none.
                let detail = status.get_details_bad_request().and_then(|b| b.field_violations.into_iter().next());
                let (field, reason) = match detail {
                    Some(v) => (v.field, v.description),
                    None => split_invalid(&message),
                };
                Error::InvalidArgument { field, reason }
            }
            Code::ResourceExhausted => Error::ResourceExhausted { message },
            Code::Unavailable => Error::Unavailable { message },
            Code::Unauthenticated => Error::Unauthenticated { message },
            Code::PermissionDenied => Error::PermissionDenied { message },
            code => Error::Rpc { code, message },
        }
    }

    /// True when trying again later may succeed: the coordinator could not be
    /// reached, or said it is unavailable.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }
}

/// A status that the transport made (connection refused or reset, no
/// answer), as opposed to one the server sent: tonic keeps the cause as the
/// source only for the former.
pub(crate) fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// The message of a transport status with its causes, e.g.
/// `transport error: tcp connect error: Connection refused`.
fn transport_message(status: &Status) -> String {
    let mut msg = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

/// What a transport failure means, in words: `connection refused`, `connection
/// reset`, `host unreachable`, … from the innermost I/O error (its kind, or
/// its text without the `(os error N)` tail); else the innermost cause's text.
pub(crate) fn transport_words(status: &Status) -> String {
    if timed_out(status) {
        return "no answer in time".to_owned();
    }
    error_words(std::error::Error::source(status), status.message())
}

/// Whether a transport failure is a timeout (the connect timeout, which
/// covers the HTTP/2 handshake too: a peer that accepts and never speaks).
pub(crate) fn timed_out(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        if c.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// [`transport_words`] of the chain that starts at `first`; `fallback` when
/// there is none.
pub(crate) fn error_words(first: Option<&(dyn std::error::Error + 'static)>, fallback: &str) -> String {
    let mut innermost: Option<&(dyn std::error::Error + 'static)> = None;
    let mut io: Option<&std::io::Error> = None;
    let mut cause = first;
    while let Some(c) = cause {
        if c.is::<tonic::TimeoutExpired>() {
            return "no answer in time".to_owned();
        }
        if let Some(e) = c.downcast_ref::<std::io::Error>() {
            io = Some(e);
        }
        innermost = Some(c);
        cause = c.source();
    }
    if let Some(e) = io {
        let kind = e.kind().to_string();
        if kind != "other error" && kind != "uncategorized error" {
            return kind;
        }
        let text = e.to_string();
        return match text.find(" (os error") {
            Some(i) => text[..i].to_owned(),
            None => text,
        };
    }
    match innermost {
        Some(c) => c.to_string(),
        None => fallback.to_owned(),
    }
}

/// Splits the server's `invalid FIELD: REASON` message; the whole message is
/// the reason when it has another form.
fn split_invalid(message: &str) -> (String, String) {
    message
        .strip_prefix("invalid ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(field, _)| !field.is_empty() && !field.contains(' '))
        .map(|(field, reason)| (field.to_owned(), reason.to_owned()))
        .unwrap_or_else(|| ("unknown".to_owned(), message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_from_the_server_message() {
        let e = Error::from_status(Status::invalid_argument("invalid key: must not be empty"));
        assert!(
            matches!(&e, Error::InvalidArgument { field, reason } if field == "key" && reason == "must not be empty")
        );
        let detailed = Status::with_error_details(
            Code::InvalidArgument,
            "a message in other words",
            tonic_types::ErrorDetails::with_bad_request_violation("wait_timeout", "must not be negative"),
        );
        let e = Error::from_status(detailed);
        assert!(
            matches!(&e, Error::InvalidArgument { field, reason } if field == "wait_timeout" && reason == "must not be negative"),
            "the BadRequest detail wins over the message: {e:?}"
        );
        let e = Error::from_status(Status::invalid_argument("something else"));
        assert!(matches!(&e, Error::InvalidArgument { field, .. } if field == "unknown"));
    }

    #[test]
    fn server_statuses_map_to_their_variants() {
        assert!(matches!(Error::from_status(Status::unavailable("recovering")), Error::Unavailable { .. }));
        assert!(matches!(Error::from_status(Status::resource_exhausted("x")), Error::ResourceExhausted { .. }));
        assert!(matches!(Error::from_status(Status::permission_denied("x")), Error::PermissionDenied { .. }));
        assert!(matches!(Error::from_status(Status::unauthenticated("x")), Error::Unauthenticated { .. }));
        assert!(matches!(Error::from_status(Status::internal("x")), Error::Rpc { code: Code::Internal, .. }));
        assert!(!is_transport(&Status::unavailable("sent by a server")));
    }

    #[test]
    fn transport_statuses_are_unavailable_whatever_their_code() {
        let s = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(is_transport(&s));
        let e = Error::from_status(s);
        assert!(matches!(&e, Error::Unavailable { message } if message.contains("connection reset")), "{e:?}");
        assert!(e.is_transient());
    }
}
