//! How `get` and `ls` print keys: an aligned table for people, JSON for scripts.

use std::io::{self, Write};

use serde::Serialize;
use turnstile_client::LockInfo;

/// One key as JSON.
#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    key: &'a str,
    held: bool,
    owner: Option<&'a str>,
    fencing_token: Option<u64>,
    expires_in_ms: Option<u64>,
    waiters: u32,
    /// Only while the coordinator recovers after a crash (`get`).
    #[serde(skip_serializing_if = "Option::is_none")]
    grants_resume_in_ms: Option<u64>,
}

impl<'a> From<&'a LockInfo> for JsonRow<'a> {
    fn from(i: &'a LockInfo) -> Self {
        JsonRow {
            key: &i.key,
            held: i.holder.is_some(),
            owner: i.holder.as_ref().map(|h| h.owner.as_str()),
            fencing_token: i.holder.as_ref().map(|h| h.fencing_token),
            expires_in_ms: i.holder.as_ref().map(|h| u64::try_from(h.expires_in.as_millis()).unwrap_or(u64::MAX)),
            waiters: i.waiters,
            grants_resume_in_ms: i.grants_resume_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// One key as a JSON object on one line.
pub(crate) fn json_one(out: &mut impl Write, info: &LockInfo) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &JsonRow::from(info))?;
    writeln!(out)
}

/// Keys as one JSON array.
pub(crate) fn json_many(out: &mut impl Write, infos: &[LockInfo]) -> io::Result<()> {
    let rows: Vec<JsonRow<'_>> = infos.iter().map(JsonRow::from).collect();
    serde_json::to_writer(&mut *out, &rows)?;
    writeln!(out)
}

/// Keys as a table with a header, columns aligned.
pub(crate) fn table(out: &mut impl Write, infos: &[LockInfo]) -> io::Result<()> {
    let header = ["KEY", "OWNER", "TOKEN", "EXPIRES IN", "WAITERS"].map(String::from);
    let rows: Vec<[String; 5]> = infos
        .iter()
        .map(|i| match &i.holder {
            Some(h) => [
                i.key.clone(),
                h.owner.clone(),
                h.fencing_token.to_string(),
                human(h.expires_in),
                i.waiters.to_string(),
            ],
            None => [i.key.clone(), "-".into(), "-".into(), "-".into(), i.waiters.to_string()],
        })
        .collect();
    let mut width = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (n, (cell, w)) in row.iter().zip(width).enumerate() {
            if n + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

pub(crate) use turnstile_client::human_duration as human;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use turnstile_client::Holder;

    use super::*;

    fn infos() -> Vec<LockInfo> {
        vec![
            LockInfo {
                key: "payment:42".into(),
                holder: Some(Holder {
                    owner: "web-1/77/ab12cd34/1".into(),
                    fencing_token: 17,
                    expires_in: Duration::from_millis(12_340),
                }),
                waiters: 2,
                grants_resume_in: None,
            },
            LockInfo { key: "p:1".into(), holder: None, waiters: 1, grants_resume_in: None },
        ]
    }

    #[test]
    fn the_table_is_aligned() {
        let mut out = Vec::new();
        table(&mut out, &infos()).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "KEY         OWNER                TOKEN  EXPIRES IN  WAITERS\n\
             payment:42  web-1/77/ab12cd34/1  17     12.3s       2\n\
             p:1         -                    -      -           1\n"
        );
    }

    #[test]
    fn json_has_one_object_per_key() {
        let mut out = Vec::new();
        json_many(&mut out, &infos()).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v[0]["owner"], "web-1/77/ab12cd34/1");
        assert_eq!(v[0]["expires_in_ms"], 12_340);
        assert_eq!(v[1]["held"], false);
        assert!(v[1]["owner"].is_null());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
        assert_eq!(human(Duration::from_secs(7800)), "2h10m");
    }
}
