//! Bearer tokens and what each may do (`--auth-token-file`).
//!
//! The token file holds one JSON object per line; blank lines and lines
//! starting with `#` are skipped:
//!
//! ```text
//! # name: for logs (the token itself is never logged)
//! {"name": "payments-api", "token": "<at least 16 characters>", "prefixes": ["payments/"], "verbs": ["lock", "inspect"]}
//! {"name": "oncall", "token": "<another>", "prefixes": [""], "verbs": ["admin"]}
//! ```
//!
//! A token may touch keys that start with one of its `prefixes` (`""` is
//! every key) with its `verbs`: `lock` (Acquire, Renew, Release), `inspect`
//! (GetLock, ListLocks) and `admin` (everything, and the operator call
//! ForceRelease, which only `admin` may make). Without a token file (open
//! access, e.g. a loopback sidecar) every call is allowed, ForceRelease too. A LockService call without a known token is `UNAUTHENTICATED`; a
//! verb or key the token lacks is `PERMISSION_DENIED`, checked before the
//! backend is asked, so nothing changes. ListLocks lists only keys under the
//! token's prefixes. Health and reflection are not LockService and need no
//! token.
//!
//! Tokens are kept as SHA-256 digests only, and looked up by digest, so the
//! lookup's timing says nothing about how much of a guessed token matched.
//! The file is re-read by [`TokenFile::reload`] (on SIGHUP); a file that does
//! not parse leaves the previous tokens in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::backend::{Backend, LockInfo};
use crate::error::BackendError;

/// Shortest token accepted, in characters: shorter ones are guessable.
const MIN_TOKEN_CHARS: usize = 16;

/// What a call does, and so which grant it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Acquire, Renew, Release.
    Lock,
    /// GetLock, ListLocks.
    Inspect,
    /// Everything, including the operator call ForceRelease (admin only).
    Admin,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Lock => "lock",
            Verb::Inspect => "inspect",
            Verb::Admin => "admin",
        }
    }
}

/// What one token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Its name in logs and in refusals.
    pub name: String,
    /// Key prefixes it may touch; `""` is every key. None is a prefix of another.
    pub prefixes: Vec<String>,
    /// What it may do there.
    pub verbs: Vec<Verb>,
}

impl Grant {
    fn allows(&self, verb: Verb) -> bool {
        self.verbs.contains(&verb) || self.verbs.contains(&Verb::Admin)
    }

    fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn prefixes_text(&self) -> String {
        self.prefixes.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
    }

    /// `verb` on `key`, or why not.
    pub fn check(&self, verb: Verb, key: &str) -> Result<(), Status> {
        if !self.allows(verb) {
            return Err(Status::permission_denied(format!(
                "token {:?} may not {} (it may: {})",
                self.name,
                verb.as_str(),
                self.verbs.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        if !self.covers(key) {
            return Err(Status::permission_denied(format!(
                "token {:?} may not touch key {key:?}: it is under none of its prefixes ({})",
                self.name,
                self.prefixes_text()
            )));
        }
        Ok(())
    }

    /// The prefixes to list for a ListLocks of `prefix`: `[prefix]` when one
    /// grant prefix covers it, else the grant prefixes under it (so that
    /// `turnstile ls` lists what the token may see). None at all is a refusal.
    pub fn list_scopes(&self, prefix: &str) -> Result<Vec<String>, Status> {
        if !self.allows(Verb::Inspect) {
            return self.check(Verb::Inspect, prefix).map(|()| Vec::new());
        }
        if self.covers(prefix) {
            return Ok(vec![prefix.to_owned()]);
        }
        let under: Vec<String> = self.prefixes.iter().filter(|p| p.starts_with(prefix)).cloned().collect();
        if under.is_empty() {
            return Err(Status::permission_denied(format!(
                "token {:?} may not list keys under {prefix:?}: none of its prefixes ({}) overlaps it",
                self.name,
                self.prefixes_text()
            )));
        }
        Ok(under)
    }
}

/// Who may call: everyone (no token file), or the holders of known tokens.
#[derive(Debug, Clone, Default)]
pub enum Access {
    /// No `--auth-token-file`: every call may do everything.
    #[default]
    Open,
    /// Calls must carry a token from this file.
    Tokens(Arc<TokenFile>),
}

impl Access {
    /// The caller's grant, from its `authorization: Bearer` metadata; `None`
    /// when access is open.
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Option<Arc<Grant>>, Status> {
        let Access::Tokens(file) = self else { return Ok(None) };
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated("missing `authorization: Bearer <token>` metadata"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| Status::unauthenticated("the authorization metadata is not `Bearer <token>`"))?;
        file.lookup(token)
            .map(Some)
            .ok_or_else(|| Status::unauthenticated("the bearer token is not known to this server"))
    }

    /// Checks that the caller may do `verb` on `key`.
    pub fn check(&self, metadata: &MetadataMap, verb: Verb, key: &str) -> Result<(), Status> {
        match self.caller(metadata)? {
            Some(grant) => grant.check(verb, key),
            None => Ok(()),
        }
    }

    /// The prefixes a ListLocks of `prefix` may read (see [`Grant::list_scopes`]).
    pub fn list_scopes(&self, metadata: &MetadataMap, prefix: &str) -> Result<Vec<String>, Status> {
        match self.caller(metadata)? {
            Some(grant) => grant.list_scopes(prefix),
            None => Ok(vec![prefix.to_owned()]),
        }
    }
}

/// Up to `limit` keys under any of `scopes` (prefixes of which none is a
/// prefix of another, so their keys are disjoint), after `after`, in key
/// order: each scope listed from the backend, merged.
pub async fn list_scoped<B: Backend>(
    backend: &B,
    scopes: &[String],
    after: Option<String>,
    limit: usize,
) -> Result<Vec<LockInfo>, BackendError> {
    if let [one] = scopes {
        return backend.list(one.clone(), after, limit).await;
    }
    let mut all = Vec::new();
    for scope in scopes {
        all.extend(backend.list(scope.clone(), after.clone(), limit).await?);
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all.truncate(limit);
    Ok(all)
}

/// The token file and the tokens last read from it.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    // Read on every call, written on a reload: a read lock, no await inside.
    tokens: RwLock<Arc<Tokens>>,
}

/// Tokens by SHA-256 digest.
type Tokens = HashMap<[u8; 32], Arc<Grant>>;

/// Why a token file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It could not be read.
    #[error("cannot read token file {path}: {source}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("token file {path}, line {line}: {reason}", path = path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Not one token: every call would be refused.
    #[error("token file {path} holds no token", path = path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// One line of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    name: Option<String>,
    token: String,
    prefixes: Vec<String>,
    verbs: Vec<Verb>,
}

impl TokenFile {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<TokenFile, TokenFileError> {
        let tokens = read_tokens(path)?;
        Ok(TokenFile { path: path.to_owned(), tokens: RwLock::new(Arc::new(tokens)) })
    }

    /// Reads the file again; on an error the previous tokens stay in force.
    /// Returns how many tokens are now in force.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let tokens = read_tokens(&self.path)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        Ok(n)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lookup(&self, token: &str) -> Option<Arc<Grant>> {
        let digest = sha256(token);
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).get(&digest).cloned()
    }
}

fn sha256(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn read_tokens(path: &Path) -> Result<Tokens, TokenFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_owned(), source })?;
    parse_tokens(&text)
        .map_err(|(line, reason)| TokenFileError::Line { path: path.to_owned(), line, reason })?
        .ok_or_else(|| TokenFileError::Empty { path: path.to_owned() })
}

/// The tokens of a file's text (`None`: not one), or the first bad line and why.
fn parse_tokens(text: &str) -> Result<Option<Tokens>, (usize, String)> {
    let mut tokens = Tokens::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let e: Entry = serde_json::from_str(line).map_err(|e| (line_no, format!("not a token entry: {e}")))?;
        let bad = |reason: &str| Err((line_no, reason.to_owned()));
        if e.token.chars().count() < MIN_TOKEN_CHARS {
            return bad(&format!("token must be at least {MIN_TOKEN_CHARS} characters"));
        }
        // It travels in an HTTP header after `Bearer `.
        if !e.token.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("token must be printable ASCII without spaces");
        }
        if e.prefixes.is_empty() {
            return bad("prefixes must not be empty (\"\" grants every key)");
        }
        if e.verbs.is_empty() {
            return bad("verbs must not be empty (lock, inspect, admin)");
        }
        let name = e.name.unwrap_or_else(|| format!("line {line_no}"));
        // Drop prefixes that another one covers, so listed scopes are disjoint.
        let mut prefixes = e.prefixes.clone();
        prefixes.sort();
        prefixes.dedup();
        let all = prefixes.clone();
        prefixes.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q.as_str())));
        let grant = Grant { name, prefixes, verbs: e.verbs };
        if tokens.insert(sha256(&e.token), Arc::new(grant)).is_some() {
            return bad("the same token appears on an earlier line");
        }
    }
    Ok((!tokens.is_empty()).then_some(tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn grant(prefixes: &[&str], verbs: &[Verb]) -> Grant {
        Grant { name: "t".into(), prefixes: prefixes.iter().map(|p| p.to_string()).collect(), verbs: verbs.to_vec() }
    }

    #[test]
    fn a_key_outside_the_prefixes_or_a_missing_verb_is_permission_denied() {
        let g = grant(&["payments/"], &[Verb::Lock]);
        assert!(g.check(Verb::Lock, "payments/42").is_ok());
        assert_eq!(g.check(Verb::Lock, "orders/1").unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(g.check(Verb::Lock, "payments").unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(g.check(Verb::Inspect, "payments/42").unwrap_err().code(), Code::PermissionDenied);
        let admin = grant(&[""], &[Verb::Admin]);
        assert!(admin.check(Verb::Lock, "anything").is_ok() && admin.check(Verb::Inspect, "x").is_ok());
    }

    #[test]
    fn list_scopes_never_reach_outside_the_prefixes() {
        let g = grant(&["payments/", "refunds/"], &[Verb::Inspect]);
        assert_eq!(g.list_scopes("payments/4").unwrap(), ["payments/4"]);
        assert_eq!(g.list_scopes("").unwrap(), ["payments/", "refunds/"]);
        assert_eq!(g.list_scopes("pay").unwrap(), ["payments/"]);
        assert_eq!(g.list_scopes("orders/").unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(grant(&[""], &[Verb::Lock]).list_scopes("").unwrap_err().code(), Code::PermissionDenied);
    }

    #[test]
    fn the_file_format_parses_and_names_the_bad_line() {
        let text = r#"
# comment
{"name": "pay", "token": "0123456789abcdef", "prefixes": ["payments/", "payments/eu/"], "verbs": ["lock"]}

{"token": "fedcba9876543210", "prefixes": [""], "verbs": ["admin"]}
"#;
        let tokens = parse_tokens(text).unwrap().unwrap();
        assert_eq!(tokens.len(), 2);
        let pay = &tokens[&sha256("0123456789abcdef")];
        assert_eq!(pay.prefixes, ["payments/"], "covered prefixes are dropped");
        assert_eq!(tokens[&sha256("fedcba9876543210")].name, "line 5");
        let bad = |t: &str| parse_tokens(t).unwrap_err();
        assert_eq!(bad("\n{\"token\": \"short\", \"prefixes\": [\"\"], \"verbs\": [\"lock\"]}").0, 2);
        assert!(bad(r#"{"token": "0123456789abcdef", "prefix": [""], "verbs": ["lock"]}"#).1.contains("prefix"));
        assert!(bad(r#"{"token": "0123456789abcdef", "prefixes": [""], "verbs": ["write"]}"#).1.contains("write"));
        assert!(bad(r#"{"token": "0123456789abcdef", "prefixes": [], "verbs": ["lock"]}"#).1.contains("prefixes"));
        assert!(bad(r#"{"token": "0123456789 abcdef", "prefixes": [""], "verbs": ["lock"]}"#).1.contains("ASCII"));
        let dup = r#"{"token": "0123456789abcdef", "prefixes": [""], "verbs": ["lock"]}"#;
        assert_eq!(bad(&format!("{dup}\n{dup}")).0, 2);
        assert!(parse_tokens("# nothing\n").unwrap().is_none());
    }

    #[test]
    fn the_bearer_metadata_is_required_and_looked_up() {
        let dir = std::env::temp_dir().join(format!("turnstile-auth-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.jsonl");
        std::fs::write(&path, r#"{"token": "0123456789abcdef", "prefixes": ["a/"], "verbs": ["lock"]}"#).unwrap();
        let access = Access::Tokens(Arc::new(TokenFile::load(&path).unwrap()));
        let mut md = MetadataMap::new();
        assert_eq!(access.caller(&md).unwrap_err().code(), Code::Unauthenticated);
        md.insert("authorization", "Basic 0123456789abcdef".parse().unwrap());
        assert_eq!(access.caller(&md).unwrap_err().code(), Code::Unauthenticated);
        md.insert("authorization", "Bearer 0123456789abcdeX".parse().unwrap());
        assert_eq!(access.caller(&md).unwrap_err().code(), Code::Unauthenticated);
        md.insert("authorization", "bearer 0123456789abcdef".parse().unwrap());
        assert!(access.check(&md, Verb::Lock, "a/1").is_ok());
        assert!(Access::Open.check(&MetadataMap::new(), Verb::Admin, "any").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
