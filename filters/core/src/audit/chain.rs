//! Tamper evidence: each record of a stream (one per Envoy worker) carries its sequence number
//! and `mac = "b3:" base64(BLAKE3-keyed(derive_key(key[kid]), previous mac ‖ record without its
//! mac))`; the first record's previous mac is 32 zero bytes. Editing, deleting, inserting or
//! swapping records breaks the chain at that point, and [`verify`] names the first line where it
//! breaks.
//!
//! Why BLAKE3: the MAC is computed for every request, over ~700 bytes; HMAC-SHA256 was more than
//! half of the audit stage's own work (SHA-256 has no hardware help in Wasm). Keyed BLAKE3 is a
//! MAC of the same strength at about a third of the cost. Logs sealed before (a `mac` without
//! the `b3:` prefix, HMAC-SHA256 with the key itself) still verify, record by record.

use super::Record;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::collections::{HashMap, HashSet};

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a BLAKE3 record MAC.
const BLAKE3_PREFIX: &str = "b3:";
/// BLAKE3's key derivation context: the chain key is never used as a MAC key directly.
const KEY_CONTEXT: &str = "fhirgate 2026-12 audit chain record MAC";

fn blake3_key(key: &[u8]) -> [u8; 32] {
    blake3::derive_key(KEY_CONTEXT, key)
}

fn blake3_mac(key: &[u8; 32], prev: &[u8], unsealed: &[u8]) -> Vec<u8> {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(prev);
    h.update(unsealed);
    h.finalize().as_bytes().to_vec()
}

/// The MAC of a record sealed before BLAKE3: HMAC-SHA256 with the key.
fn hmac_mac(key: &[u8], prev: &[u8], unsealed: &[u8]) -> Option<Vec<u8>> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    m.update(prev);
    m.update(unsealed);
    Some(m.finalize().into_bytes().to_vec())
}

/// The MAC a record must carry, by the algorithm its `mac` names, and the MAC it carries.
fn macs_of(key: &[u8], prev: &[u8], record: &Record) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut unsealed = record.clone();
    unsealed.mac = String::new();
    let unsealed = serde_json::to_vec(&unsealed).ok()?;
    match record.mac.strip_prefix(BLAKE3_PREFIX) {
        Some(given) => Some((
            blake3_mac(&blake3_key(key), prev, &unsealed),
            STANDARD.decode(given).ok()?,
        )),
        None => Some((
            hmac_mac(key, prev, &unsealed)?,
            STANDARD.decode(&record.mac).ok()?,
        )),
    }
}

/// One emitting stream's chain.
pub struct Chain {
    stream: String,
    kid: String,
    key: [u8; 32],
    seq: u64,
    prev: Vec<u8>,
}

impl Chain {
    pub fn new(stream: impl Into<String>, kid: impl Into<String>, key: Vec<u8>) -> Self {
        Chain {
            stream: stream.into(),
            kid: kid.into(),
            key: blake3_key(&key),
            seq: 0,
            prev: vec![0; 32],
        }
    }

    /// Numbers and seals a record.
    pub fn seal(&mut self, record: Record) -> Record {
        self.seal_line(record).0
    }

    /// Numbers and seals a record; also returns it as one JSON line (no newline), serialised
    /// once for both the MAC and the line.
    pub fn seal_line(&mut self, mut record: Record) -> (Record, String) {
        self.seq += 1;
        record.stream = self.stream.clone();
        record.seq = self.seq;
        record.kid = self.kid.clone();
        record.mac = String::new();
        let unsealed = serde_json::to_string(&record).unwrap_or_default();
        let mac = blake3_mac(&self.key, &self.prev, unsealed.as_bytes());
        record.mac = format!("{BLAKE3_PREFIX}{}", STANDARD.encode(&mac));
        self.prev = mac;
        // `mac` is the record's last field, serialised empty: the line is the same text with
        // the MAC in its place.
        let line = match unsealed.strip_suffix(r#""mac":""}"#) {
            Some(head) => format!(r#"{head}"mac":"{}"}}"#, record.mac),
            None => serde_json::to_string(&record).unwrap_or_default(),
        };
        (record, line)
    }
}

/// The first place a log stops being the untouched output of its chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// 1-based line number.
    pub line: usize,
    pub kind: BreakKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// Not a record at all.
    Unreadable,
    /// Signed with a key id the verifier was not given.
    UnknownKey(String),
    /// Records before this one (of its stream) are missing: `expected` was never seen.
    Gap {
        stream: String,
        expected: u64,
        found: u64,
    },
    /// Records are out of order: `expected` appears later in the file.
    Reordered {
        stream: String,
        expected: u64,
        found: u64,
    },
    /// The record (or the one before it in its stream) was changed.
    Edited { stream: String, seq: u64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            BreakKind::Unreadable => write!(f, "line {}: not an audit record", self.line),
            BreakKind::UnknownKey(kid) => {
                write!(f, "line {}: signed with unknown key id {kid:?}", self.line)
            }
            BreakKind::Gap {
                stream,
                expected,
                found,
            } => {
                write!(f, "line {}: stream {stream}: record {expected} is missing (found {found}): records were deleted", self.line)
            }
            BreakKind::Reordered {
                stream,
                expected,
                found,
            } => {
                write!(f, "line {}: stream {stream}: record {found} comes before {expected}: records were reordered", self.line)
            }
            BreakKind::Edited { stream, seq } => write!(
                f,
                "line {}: stream {stream}: record {seq} does not match its MAC: it was edited",
                self.line
            ),
        }
    }
}

/// Verifies a log (JSON lines, streams interleaved). Returns how many records were checked,
/// or the first break.
pub fn verify(log: &str, keys: &HashMap<String, Vec<u8>>) -> Result<usize, Break> {
    let lines: Vec<(usize, &str)> = log
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut records = Vec::with_capacity(lines.len());
    for (line, text) in &lines {
        let unreadable = Break {
            line: *line,
            kind: BreakKind::Unreadable,
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            return Err(unreadable);
        };
        let Ok(r) = Record::deserialize(&value) else {
            return Err(unreadable);
        };
        // The MAC covers the record's fields, so a line must be exactly those fields: a key
        // added, dropped or renamed (a null one reads back the same) is an edit too. Found by
        // the `audit_chain` fuzz target.
        let exact = serde_json::to_value(&r).is_ok_and(|again| again == value);
        records.push((*line, r, exact));
    }
    let present: HashSet<(String, u64)> = records
        .iter()
        .map(|(_, r, _)| (r.stream.clone(), r.seq))
        .collect();
    let mut state: HashMap<String, (u64, Vec<u8>)> = HashMap::new();
    for (line, r, exact) in &records {
        let Some(key) = keys.get(&r.kid) else {
            return Err(Break {
                line: *line,
                kind: BreakKind::UnknownKey(r.kid.clone()),
            });
        };
        let (last, prev) = state.get(&r.stream).cloned().unwrap_or((0, vec![0; 32]));
        let expected = last + 1;
        if r.seq != expected {
            let kind = if r.seq > expected && !present.contains(&(r.stream.clone(), expected)) {
                BreakKind::Gap {
                    stream: r.stream.clone(),
                    expected,
                    found: r.seq,
                }
            } else {
                BreakKind::Reordered {
                    stream: r.stream.clone(),
                    expected,
                    found: r.seq,
                }
            };
            return Err(Break { line: *line, kind });
        }
        let (mac, given) = macs_of(key, &prev, r).unwrap_or_default();
        let equal = *exact
            && !mac.is_empty()
            && mac.len() == given.len()
            && mac
                .iter()
                .zip(&given)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !equal {
            return Err(Break {
                line: *line,
                kind: BreakKind::Edited {
                    stream: r.stream.clone(),
                    seq: r.seq,
                },
            });
        }
        state.insert(r.stream.clone(), (r.seq, mac));
    }
    Ok(records.len())
}
