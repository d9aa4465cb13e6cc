//! FHIR R4 Consent evaluation: does a patient's active privacy Consent permit or deny one
//! access (who, why, when) to one resource?
//!
//! The provision tree: a provision that matches the access gives its `type`; a matching nested
//! provision is an exception to its parent and wins over it; among matching siblings deny
//! wins. A criterion fhirgate cannot evaluate (an actor named only by role, `dataPeriod`,
//! `data.meaning` other than `instance`) counts as matching for a deny and as not matching for
//! a permit, so what cannot be decided is never released by it.

use super::labels::{covers, labels_of};
use serde_json::Value;

/// One access, as far as Consents care.
#[derive(Debug, Clone, Default)]
pub struct Access<'a> {
    /// The caller's `sub` and client id; an actor reference matches either (`Practitioner/123`
    /// matches subject `123` or `Practitioner/123`).
    pub subject: Option<&'a str>,
    pub client_id: Option<&'a str>,
    /// HL7 PurposeOfUse code (TREAT, ETREAT, HPAYMT, HOPERAT, …).
    pub purpose: Option<&'a str>,
    /// Now, as an RFC 3339 date-time (compared as text after normalising to UTC `Z` forms).
    pub now: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Permit,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    Unknown,
}

impl Match {
    fn and(self, other: Match) -> Match {
        match (self, other) {
            (Match::No, _) | (_, Match::No) => Match::No,
            (Match::Unknown, _) | (_, Match::Unknown) => Match::Unknown,
            _ => Match::Yes,
        }
    }
}

fn codings(value: Option<&Value>) -> Vec<(Option<&str>, &str)> {
    let mut out = Vec::new();
    let items: Vec<&Value> = match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
        None => return out,
    };
    for item in items {
        // A CodeableConcept (with `coding`) or a Coding.
        let inner: Vec<&Value> = match item.get("coding") {
            Some(Value::Array(c)) => c.iter().collect(),
            _ => vec![item],
        };
        for c in inner {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                out.push((c.get("system").and_then(Value::as_str), code));
            }
        }
    }
    out
}

/// `[start, end]` of a Period against now; dates compare as text, which holds for the
/// ISO 8601 forms FHIR uses when both are in UTC or dates only.
fn in_period(period: &Value, now: &str) -> Match {
    let start = period.get("start").and_then(Value::as_str);
    let end = period.get("end").and_then(Value::as_str);
    let before_start = start.is_some_and(|s| now < s);
    // An end given as a date covers that whole day.
    let after_end = end.is_some_and(|e| {
        if e.len() == 10 {
            &now[..now.len().min(10)] > e
        } else {
            now > e
        }
    });
    if before_start || after_end {
        Match::No
    } else {
        Match::Yes
    }
}

fn reference_names(reference: &str, subject: &str) -> bool {
    let path = reference.split("/_history/").next().unwrap_or(reference);
    path == subject
        || path.rsplit_once('/').is_some_and(|(_, id)| id == subject)
        || path.ends_with(&format!("/{subject}"))
}

fn actor_matches(actors: &[Value], access: &Access) -> Match {
    let mut result = Match::No;
    for actor in actors {
        match actor
            .get("reference")
            .and_then(|r| r.get("reference"))
            .and_then(Value::as_str)
        {
            Some(r) => {
                let me = [access.subject, access.client_id]
                    .into_iter()
                    .flatten()
                    .any(|who| reference_names(r, who));
                if me {
                    return Match::Yes;
                }
            }
            // A role alone: fhirgate does not know the caller's roles.
            None => result = Match::Unknown,
        }
    }
    result
}

/// The resource's own `Type/id`.
fn own_reference(resource: &Value) -> Option<String> {
    Some(format!(
        "{}/{}",
        resource.get("resourceType")?.as_str()?,
        resource.get("id")?.as_str()?
    ))
}

fn provision_matches(p: &Value, resource: &Value, access: &Access) -> Match {
    let mut m = Match::Yes;
    if let Some(period) = p.get("period") {
        m = m.and(in_period(period, access.now));
    }
    if let Some(Value::Array(actors)) = p.get("actor") {
        if !actors.is_empty() {
            m = m.and(actor_matches(actors, access));
        }
    }
    let actions = codings(p.get("action"));
    if !actions.is_empty() {
        let reading = actions
            .iter()
            .any(|(_, c)| matches!(*c, "access" | "use" | "disclose"));
        m = m.and(if reading { Match::Yes } else { Match::No });
    }
    let purposes = codings(p.get("purpose"));
    if !purposes.is_empty() {
        m = m.and(match access.purpose {
            None => Match::Unknown,
            Some(purpose) => {
                if purposes.iter().any(|(_, c)| *c == purpose) {
                    Match::Yes
                } else {
                    Match::No
                }
            }
        });
    }
    let classes = codings(p.get("class"));
    if !classes.is_empty() {
        let t = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        m = m.and(if classes.iter().any(|(_, c)| *c == t) {
            Match::Yes
        } else {
            Match::No
        });
    }
    let codes = codings(p.get("code"));
    if !codes.is_empty() {
        let have = codings(resource.get("code"));
        let hit = codes.iter().any(|(s, c)| {
            have.iter()
                .any(|(hs, hc)| hc == c && (s.is_none() || hs == s))
        });
        m = m.and(if hit { Match::Yes } else { Match::No });
    }
    let labels = codings(p.get("securityLabel"));
    if !labels.is_empty() {
        let have = labels_of(resource);
        let hit = labels
            .iter()
            .any(|(_, rule)| have.iter().any(|l| covers(rule, l)));
        m = m.and(if hit { Match::Yes } else { Match::No });
    }
    if p.get("dataPeriod").is_some() {
        m = m.and(Match::Unknown);
    }
    if let Some(Value::Array(data)) = p.get("data") {
        if !data.is_empty() {
            let own = own_reference(resource);
            let mut dm = Match::No;
            for d in data {
                let meaning = d
                    .get("meaning")
                    .and_then(Value::as_str)
                    .unwrap_or("instance");
                let target = d
                    .get("reference")
                    .and_then(|r| r.get("reference"))
                    .and_then(Value::as_str);
                match (meaning, target, &own) {
                    ("instance", Some(t), Some(own))
                        if t.split("/_history/")
                            .next()
                            .is_some_and(|t| t == own || t.ends_with(&format!("/{own}"))) =>
                    {
                        dm = Match::Yes;
                        break;
                    }
                    ("instance", _, _) => {}
                    _ => dm = Match::Unknown,
                }
            }
            m = m.and(dm);
        }
    }
    m
}

fn type_of(p: &Value, inherited: Verdict) -> Verdict {
    match p.get("type").and_then(Value::as_str) {
        Some("deny") => Verdict::Deny,
        Some("permit") => Verdict::Permit,
        _ => inherited,
    }
}

/// The verdict of one provision (and its exceptions) on an access; None when it does not apply.
fn evaluate(
    p: &Value,
    resource: &Value,
    access: &Access,
    inherited: Verdict,
    depth: usize,
) -> Option<Verdict> {
    if depth > 16 {
        // A tree this deep is not a real Consent: refuse rather than recurse without end.
        return Some(Verdict::Deny);
    }
    let own = type_of(p, inherited);
    let applies = match (provision_matches(p, resource, access), own) {
        (Match::Yes, _) | (Match::Unknown, Verdict::Deny) => true,
        (Match::No, _) | (Match::Unknown, Verdict::Permit) => false,
    };
    if !applies {
        return None;
    }
    // Exceptions: a nested provision without a type has the opposite of its parent.
    let opposite = if own == Verdict::Deny {
        Verdict::Permit
    } else {
        Verdict::Deny
    };
    let mut exceptions = Vec::new();
    if let Some(Value::Array(children)) = p.get("provision") {
        for child in children {
            if let Some(v) = evaluate(child, resource, access, opposite, depth + 1) {
                exceptions.push(v);
            }
        }
    }
    if exceptions.contains(&Verdict::Deny) {
        Some(Verdict::Deny)
    } else if exceptions.contains(&Verdict::Permit) {
        Some(Verdict::Permit)
    } else {
        Some(own)
    }
}

/// Is this a Consent fhirgate enforces: an active patient-privacy Consent?
pub fn is_privacy_consent(consent: &Value) -> bool {
    consent.get("resourceType").and_then(Value::as_str) == Some("Consent")
        && consent.get("status").and_then(Value::as_str) == Some("active")
        && codings(consent.get("scope"))
            .iter()
            .any(|(_, c)| *c == "patient-privacy")
}

/// One Consent's verdict on an access to a resource, or None when it says nothing about it.
/// Without a provision, the policy rule decides: `OPTOUT` denies, `OPTIN` permits.
pub fn decide(consent: &Value, resource: &Value, access: &Access) -> Option<Verdict> {
    if !is_privacy_consent(consent) {
        return None;
    }
    match consent.get("provision") {
        Some(p) => evaluate(p, resource, access, Verdict::Deny, 0),
        None => match codings(consent.get("policyRule")).first().map(|(_, c)| *c) {
            Some("OPTOUT") | Some("OPTOUTE") => Some(Verdict::Deny),
            Some("OPTIN") | Some("OPTINR") => Some(Verdict::Permit),
            _ => None,
        },
    }
}

#[cfg(test)]
#[path = "provision_tests.rs"]
mod tests;
