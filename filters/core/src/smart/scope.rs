//! SMART App Launch scopes: v1 (`patient/Observation.read`), v2 (`patient/Observation.rs`)
//! and v2 granular (`patient/Observation.rs?category=…|laboratory`).
//!
//! A scope that does not parse grants nothing: never a truncated prefix of what it says.

use crate::fhir;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    Patient,
    User,
    System,
}

impl Context {
    pub fn name(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// The SMART v2 permission letters as a set, always shown in `cruds` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Permissions(u8);

impl Permissions {
    pub const C: Permissions = Permissions(1);
    pub const R: Permissions = Permissions(2);
    pub const U: Permissions = Permissions(4);
    pub const D: Permissions = Permissions(8);
    pub const S: Permissions = Permissions(16);
    const LETTERS: [(char, Permissions); 5] = [
        ('c', Self::C),
        ('r', Self::R),
        ('u', Self::U),
        ('d', Self::D),
        ('s', Self::S),
    ];

    pub const fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// v2 letters: a non-empty, strictly in-order subset of `cruds`.
    fn from_v2(letters: &str) -> Option<Permissions> {
        let mut perms = Permissions::default();
        let mut next = 0;
        for ch in letters.chars() {
            let pos = Self::LETTERS[next..].iter().position(|(l, _)| *l == ch)?;
            perms = perms.union(Self::LETTERS[next + pos].1);
            next += pos + 1;
        }
        (!perms.is_empty()).then_some(perms)
    }

    /// v1 words, normalised: read → rs, write → cud, * → cruds.
    fn from_v1(word: &str) -> Option<Permissions> {
        match word {
            "read" => Some(Self::R.union(Self::S)),
            "write" => Some(Self::C.union(Self::U).union(Self::D)),
            "*" => Some(
                Self::C
                    .union(Self::R)
                    .union(Self::U)
                    .union(Self::D)
                    .union(Self::S),
            ),
            _ => None,
        }
    }

    pub fn letters(self) -> String {
        Self::LETTERS
            .iter()
            .filter(|(_, p)| self.contains(*p))
            .map(|(l, _)| *l)
            .collect()
    }
}

/// One parsed resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: Context,
    /// None for `*`.
    pub resource: Option<&'static str>,
    pub permissions: Permissions,
    /// Granular constraints, in the scope's order: (name, raw value after the first `=`).
    pub params: Vec<(String, String)>,
    /// Written in SMART v1 syntax.
    pub v1: bool,
}

impl ResourceScope {
    pub fn covers_type(&self, resource_type: &str) -> bool {
        self.resource.is_none_or(|r| r == resource_type)
    }
}

/// A scope string: a resource scope, or another valid OAuth scope (openid, fhirUser,
/// launch/patient, offline_access, …) that grants no data access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Resource(ResourceScope),
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeError {
    /// Not an OAuth scope token (RFC 6749 §3.3), or empty.
    Syntax,
    /// Starts like a resource scope (`patient/`, `user/`, `system/`) but does not parse.
    Resource,
}

/// RFC 6749 scope-token characters: %x21 / %x23-5B / %x5D-7E.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

pub fn parse(scope: &str) -> Result<Scope, ScopeError> {
    if !is_scope_token(scope) {
        return Err(ScopeError::Syntax);
    }
    let (context, rest) = match scope.split_once('/') {
        Some(("patient", rest)) => (Context::Patient, rest),
        Some(("user", rest)) => (Context::User, rest),
        Some(("system", rest)) => (Context::System, rest),
        // A misspelt context is a broken resource scope, not some other scope.
        Some((ctx, _))
            if ["patient", "user", "system"]
                .iter()
                .any(|c| c.eq_ignore_ascii_case(ctx)) =>
        {
            return Err(ScopeError::Resource)
        }
        // `fake/Patient.write`, `patient*.read`, `/Patient.read`: shaped like a resource scope
        // with a context SMART does not define. Invalid, never some other valid scope.
        _ if resource_shaped(scope) => return Err(ScopeError::Resource),
        _ => return Ok(Scope::Other(scope.to_string())),
    };
    parse_resource(context, rest)
        .map(Scope::Resource)
        .ok_or(ScopeError::Resource)
}

/// Does `scope` end like a resource scope — a resource type or `*`, a dot, and SMART v1 or v2
/// permissions (with or without constraints)?
fn resource_shaped(scope: &str) -> bool {
    let body = scope.split('?').next().unwrap_or(scope);
    let Some((before, access)) = body.rsplit_once('.') else {
        return false;
    };
    let permissions =
        Permissions::from_v1(access).is_some() || Permissions::from_v2(access).is_some();
    let resource = before.rsplit('/').next().unwrap_or(before);
    permissions
        && (resource.ends_with('*')
            || fhir::R4_RESOURCE_TYPES
                .iter()
                .any(|t| resource.ends_with(t)))
}

/// Search parameters a granular scope may carry: filters only. Result parameters (`_include`,
/// `_revinclude`, `_count`, `_elements`, `_summary`, `_sort`, `_total`, `_contained` …),
/// `_has`, chains and every other control parameter would change what the narrowed search
/// returns rather than which resources match: a scope with one grants nothing.
fn is_filter_parameter(name: &str) -> bool {
    const FILTERS: &[&str] = &[
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
    ];
    let base = name.split(':').next().unwrap_or(name);
    !name.contains('.')
        && (!base.starts_with('_') || FILTERS.contains(&base))
        && !name.ends_with(":iterate")
}

fn parse_resource(context: Context, rest: &str) -> Option<ResourceScope> {
    let (body, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (resource, access) = body.split_once('.')?;
    let resource = if resource == "*" {
        None
    } else {
        Some(fhir::resource_type(resource)?)
    };
    let (permissions, v1) = match Permissions::from_v1(access) {
        Some(p) => (p, true),
        None => (Permissions::from_v2(access)?, false),
    };
    let mut params = Vec::new();
    if let Some(q) = query {
        // Granular constraints are SMART v2 only.
        if v1 {
            return None;
        }
        for pair in q.split('&') {
            let (name, value) = pair.split_once('=')?;
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
            if !name_ok
                || !is_filter_parameter(name)
                || value.is_empty()
                || params.iter().any(|(n, _)| n == name)
            {
                return None;
            }
            params.push((name.to_string(), value.to_string()));
        }
    }
    Some(ResourceScope {
        context,
        resource,
        permissions,
        params,
        v1,
    })
}

/// Every scope of a token's space-separated `scope` claim, malformed ones included as errors.
pub fn parse_all(scopes: &str) -> Vec<(String, Result<Scope, ScopeError>)> {
    scopes
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| (s.to_string(), parse(s)))
        .collect()
}

/// The resource scopes among `scopes`; malformed and non-resource scopes grant nothing.
pub fn resource_scopes(scopes: &str) -> Vec<ResourceScope> {
    parse_all(scopes)
        .into_iter()
        .filter_map(|(_, s)| match s {
            Ok(Scope::Resource(r)) => Some(r),
            _ => None,
        })
        .collect()
}

/// The JSON of `fhirgate scope parse`.
pub fn describe(scope: &str) -> Value {
    match parse(scope) {
        Ok(Scope::Resource(r)) => json!({
            "valid": true,
            "context": r.context.name(),
            "resource": r.resource.unwrap_or("*"),
            "permissions": r.permissions.letters(),
            "params": if r.params.is_empty() {
                Value::Null
            } else {
                Value::Object(r.params.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
            },
            "resource_scope": true,
        }),
        Ok(Scope::Other(_)) => json!({
            "valid": true, "context": null, "resource": null, "permissions": null, "params": null, "resource_scope": false,
        }),
        Err(_) => json!({
            "valid": false, "context": null, "resource": null, "permissions": null, "params": null, "resource_scope": false,
        }),
    }
}

#[cfg(test)]
#[path = "scope_tests.rs"]
mod tests;
