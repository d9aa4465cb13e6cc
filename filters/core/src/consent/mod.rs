//! Consent filtering: what a patient's Consents or a resource's security labels forbid never
//! leaves the gateway. Response-side: a single resource is released, redacted or refused; a
//! Bundle loses (or has redacted) the entries it may not carry.
//!
//! The filter crate fetches Consents; this module decides with whatever it was given.

pub mod cache;
pub mod config;
pub mod guard;
pub mod labels;
pub mod provision;
pub mod scan;

use crate::outcome::IssueType;
use crate::smart::authz::patients_of;
use crate::Rejection;
use config::{Action, BulkExportPolicy, Conflict, ConsentConfig, TotalPolicy, VersionsPolicy};
use labels::{add_label, covers, labels_of, OBSERVATION_VALUE};
use provision::{Access, Verdict};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;

pub use config::ConsentConfig as Config;

/// Who is asking and why.
#[derive(Debug, Clone, Default)]
pub struct Caller<'a> {
    pub subject: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub purpose: Option<&'a str>,
    /// The rate-limit filter verified a break-glass token for this request.
    pub break_glass: bool,
    /// Now, RFC 3339 UTC.
    pub now: &'a str,
}

/// A patient's Consents as far as the filter knows them.
pub enum Consents<'a> {
    Known(&'a [Value]),
    /// The fetch failed (or timed out).
    Unavailable,
}

/// A Binary's security context (the resource its `securityContext` references) as the filter
/// knows it: a Binary is judged by the strictest of its own labels and its context's, and by
/// its context's patients (issue 15, class 6).
pub enum SecurityContext<'a> {
    Known(&'a Value),
    /// Not fetched, not found, or not fetchable: the Binary is withheld.
    Unavailable,
}

/// What the filter is given to decide with: each patient's Consents, each Binary's context.
pub struct Known<'f, 'c> {
    pub consents: &'f dyn Fn(&str) -> Consents<'c>,
    pub contexts: &'f dyn Fn(&str) -> SecurityContext<'c>,
}

/// What happened to one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Resources withheld (dropped from a Bundle, or the single read refused), by reason.
    pub withheld: BTreeMap<&'static str, u32>,
    /// Resources redacted, by reason.
    pub redacted: BTreeMap<&'static str, u32>,
    /// Resources released with the Part 2 redisclosure label.
    pub part2_labelled: u32,
    /// Resources released only because of break-glass.
    pub break_glass_released: u32,
}

/// The filter's answer on one response.
#[derive(Debug)]
pub enum Filtered {
    /// Send as it came.
    Unchanged,
    /// Send this body instead.
    Rewritten(Vec<u8>),
    /// Refuse: a withheld single read, an unreadable or oversized body.
    Refused(Rejection),
}

/// What a byte scan of a response shows, before any parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastPath {
    /// Nothing in it can be withheld: no security label, no patient with a privacy Consent.
    Release,
    /// These patients' Consents must be known first (then scan again).
    NeedConsents(Vec<String>),
    /// It must be parsed and decided resource by resource.
    Parse,
}

/// Whether the filter reads a response, decided on its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// Not a success with a body: nothing to filter.
    Skip,
    /// Hold the head and read the body.
    Read,
    /// A success the filter cannot read (not JSON): refused once its body has arrived, never
    /// passed unread.
    Refuse(Rejection),
}

/// How one resource is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Treatment {
    Release,
    Redact(Vec<String>, &'static str),
    Withhold(&'static str),
}

pub struct ConsentPolicy {
    pub config: ConsentConfig,
    /// The routing rules with their defaults: what a batch entry's method and URL stand for
    /// ([`guard`]).
    entry_routing: crate::routing::RoutingPolicy,
}

fn severity(a: Action) -> u8 {
    match a {
        Action::Redact => 1,
        Action::Drop => 2,
        Action::Refuse => 3,
    }
}

impl ConsentPolicy {
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::config::ConfigError> {
        Ok(ConsentPolicy {
            config: ConsentConfig::from_json(bytes)?,
            entry_routing: crate::routing::RoutingPolicy::from_json(b"{}")?,
        })
    }

    /// The purpose of use of a request: the configured header's value (an HL7 PurposeOfUse
    /// code), else a verified break-glass token's reason, else the configured default.
    pub fn purpose_of<'a>(
        &'a self,
        header_value: Option<&'a str>,
        break_glass_reason: Option<&'a str>,
    ) -> Option<&'a str> {
        let code = |v: &&str| {
            !v.is_empty()
                && v.len() <= 32
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        header_value
            .filter(code)
            .or(break_glass_reason.filter(code))
            .or(self.config.purpose.default.as_deref())
    }

    /// Decides from the raw bytes whether a response can be released without parsing it.
    ///
    /// Sound only because it is conservative: any backslash escape that could disguise a key
    /// or a reference (`\u…`, `\/`), any `"security"` key (a label rule or Part 2 might apply),
    /// or any `"Patient"` string (a Patient's own id names its compartment) sends the response
    /// to [`Self::filter`]. Otherwise every patient the response can name appears as
    /// `Patient/<id>` in a string, a superset of what [`Self::patients_needed`] finds; if
    /// none of them has a privacy Consent, nothing can be withheld. `cached` gives a patient's
    /// Consents, None when they are not cached.
    pub fn fast_path<'c>(
        &self,
        body: &[u8],
        cached: &dyn Fn(&str) -> Option<Consents<'c>>,
    ) -> FastPath {
        // Only a well-formed FHIR JSON document is released unparsed: the full filter refuses
        // anything else (502), and a lenient client could read a label out of malformed JSON
        // (an unquoted `security` key) that a byte scan does not see. Found by the `consent`
        // fuzz target (broken syntax, then invalid UTF-8 inside a string).
        let scan::Scan::Clean(patients) = scan::scan(body, self.config.consents.is_some()) else {
            return FastPath::Parse;
        };
        let mut need: Vec<String> = Vec::new();
        for id in patients {
            match cached(id) {
                None => need.push(id.to_string()),
                Some(Consents::Known(list))
                    if list
                        .iter()
                        .all(|c| !consent_is_for(c, id) || !provision::is_privacy_consent(c)) => {}
                Some(_) => return FastPath::Parse,
            }
        }
        if need.is_empty() {
            FastPath::Release
        } else {
            need.sort();
            FastPath::NeedConsents(need)
        }
    }

    /// Refusals decided on the request alone, before it reaches the FHIR server: what no answer
    /// could be filtered into shape (issue 15). `raw_query` is the query as sent, `operation`
    /// the request's `$`operation.
    /// - a Bulk Data `$export` kick-off under restricting policies, unless `bulkExport:
    ///   unfiltered`;
    /// - earlier versions (vread, history) under `versions: refuse`;
    /// - count-only searches (`_summary=count`, `_count=0`): the count includes what the
    ///   caller may not see, and no entry is there to filter;
    /// - searches on a `_security` or `_tag` value a label rule withholds from this caller:
    ///   their result, even empty, tells whether such data exists.
    pub fn request_refusal(
        &self,
        interaction: &str,
        operation: Option<&str>,
        raw_query: &str,
        caller: &Caller,
    ) -> Option<Rejection> {
        let forbidden = |reason: &'static str, why: &str| {
            Some(Rejection::new(403, reason, IssueType::Forbidden, why))
        };
        if operation == Some("$export")
            && self.restricting()
            && self.config.bulk_export == BulkExportPolicy::Refuse
        {
            return forbidden(
                "export-not-filtered",
                "bulk export files are not filtered by the consent policies; this gateway refuses exports (bulkExport)",
            );
        }
        if matches!(
            interaction,
            "vread" | "history-instance" | "history-type" | "history-system"
        ) && self.config.versions == VersionsPolicy::Refuse
        {
            return forbidden("version-withheld", "earlier versions cannot be checked against the consent policies; read the current resource");
        }
        if !matches!(
            interaction,
            "search-type" | "search-system" | "search-compartment"
        ) {
            return None;
        }
        // Most searches name none of these: skip the decode (percent-encoded names are
        // decoded by the parse, so `%5Fcount` is looked for too).
        let relevant = ["_summary", "_count", "_security", "_tag", "%5F", "%5f"]
            .iter()
            .any(|n| raw_query.contains(n));
        if !relevant {
            return None;
        }
        let params = crate::routing::parse_query(raw_query, usize::MAX).unwrap_or_default();
        let count_only = params.iter().any(|p| {
            (p.name == "_summary" && p.value == "count")
                || (p.name == "_count" && p.value.trim_start_matches('0').is_empty())
        });
        if count_only {
            return forbidden(
                "count-not-permitted",
                "a count would include resources the consent policies withhold",
            );
        }
        for p in &params {
            let (base, modifier) = p
                .name
                .split_once(':')
                .map_or((p.name.as_str(), None), |(b, m)| (b, Some(m)));
            if !matches!(base, "_security" | "_tag") || matches!(modifier, Some("not" | "missing"))
            {
                continue;
            }
            for value in p.value.split(',') {
                let (system, code) = value
                    .split_once('|')
                    .map_or((None, value), |(s, c)| ((!s.is_empty()).then_some(s), c));
                let label = labels::Label {
                    system: system.map(str::to_string),
                    code: code.to_string(),
                };
                if self.label_withheld(&label, caller) {
                    return forbidden(
                        "label-search-not-permitted",
                        "the search names a security label whose resources the caller may not see",
                    );
                }
            }
        }
        None
    }

    /// Would a resource carrying `label` be withheld (dropped, refused or redacted) from the
    /// caller by a label rule?
    fn label_withheld(&self, label: &labels::Label, caller: &Caller) -> bool {
        if caller.break_glass && self.config.break_glass_overrides {
            return false;
        }
        self.config.labels.iter().any(|rule| {
            !rule_allows(rule, caller) && rule.codes.iter().any(|code| covers(code, label))
        })
    }

    /// What to do with a FHIR interaction's response, from its status and content type.
    pub fn read_plan(&self, status: u16, content_type: &str) -> ReadPlan {
        if !(200..300).contains(&status) {
            return ReadPlan::Skip;
        }
        if !content_type.to_ascii_lowercase().contains("json") {
            return ReadPlan::Refuse(Rejection::new(
                502,
                "response-format-unsupported",
                IssueType::NotSupported,
                "the consent filter reads FHIR JSON responses only; ask for application/fhir+json",
            ));
        }
        ReadPlan::Read
    }

    /// The refusal of a response naming more uncached patients than may be looked up.
    pub fn too_many_patients(&self, missing: usize) -> Option<Rejection> {
        let max = self.config.consents.as_ref().map_or(0, |c| c.max_patients);
        (missing > max).then(|| {
            Rejection::new(503, "consent-too-many-patients", IssueType::TooCostly, "the response names more patients than the consent filter may look up; narrow the search")
        })
    }

    /// The patients whose Consents are needed to filter this response (none when Consents are
    /// not configured), sorted and deduplicated. `contexts`: the Binaries' security contexts
    /// fetched so far (their patients count too).
    pub fn patients_needed<'v>(
        &self,
        response: &Value,
        contexts: &dyn Fn(&str) -> Option<&'v Value>,
    ) -> Vec<String> {
        if self.config.consents.is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for_each_resource(response, &mut |r| {
            out.extend(patients_of(r));
            if let BinaryContext::Resource(reference) = binary_context(r) {
                if let Some(context) = contexts(&reference) {
                    out.extend(patients_of(context));
                }
            }
        });
        out.sort();
        out.dedup();
        out
    }

    /// The security contexts (`Type/id`) of the response's Binaries that must be read before
    /// they can be judged, sorted and deduplicated (none when no policy restricts).
    pub fn contexts_needed(&self, response: &Value) -> Vec<String> {
        if !self.restricting() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for_each_resource(response, &mut |r| {
            if let BinaryContext::Resource(reference) = binary_context(r) {
                out.push(reference);
            }
        });
        out.sort();
        out.dedup();
        out
    }

    /// The path to read a security context from (`currentResource`), None when none is
    /// configured (the Binary is then withheld).
    pub fn context_path(&self, reference: &str) -> Option<String> {
        self.config
            .current_resource
            .as_ref()
            .map(|source| format!("{}/{reference}", source.path))
    }

    /// A security context as read: the resource when it is the one referenced.
    pub fn read_context(&self, reference: &str, status: u16, body: &[u8]) -> Option<Value> {
        if status != 200 {
            return None;
        }
        let context: Value = serde_json::from_slice(body).ok()?;
        let (t, id) = reference.split_once('/')?;
        (context.get("resourceType").and_then(Value::as_str) == Some(t)
            && context.get("id").and_then(Value::as_str) == Some(id))
        .then_some(context)
    }

    /// The response body to parse, decoded: identity, gzip or deflate (refused otherwise).
    pub fn decode<'a>(
        &self,
        content_encoding: Option<&str>,
        body: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, Rejection> {
        let limit = self.config.max_body_bytes;
        if body.len() > limit {
            return Err(too_large(limit));
        }
        let mut out = Vec::new();
        let read = match content_encoding
            .map(|e| e.trim().to_ascii_lowercase())
            .as_deref()
        {
            // Read in place: a 50 KB search page is not copied to be scanned.
            None | Some("") | Some("identity") => return Ok(std::borrow::Cow::Borrowed(body)),
            Some("gzip") | Some("x-gzip") => flate2::read::GzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut out),
            Some("deflate") => flate2::read::ZlibDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut out),
            Some(_) => {
                return Err(Rejection::new(
                    502,
                    "response-encoding-unsupported",
                    IssueType::Exception,
                    "the upstream answered in an encoding the consent filter cannot read",
                ))
            }
        };
        match read {
            Ok(n) if n > limit => Err(too_large(limit)),
            Ok(_) => Ok(std::borrow::Cow::Owned(out)),
            Err(_) => Err(Rejection::new(
                502,
                "response-unreadable",
                IssueType::Exception,
                "the upstream's compressed response could not be read",
            )),
        }
    }

    /// Parses a decoded response body into the resource or Bundle to filter.
    pub fn parse(&self, body: &[u8]) -> Result<Value, Rejection> {
        if body.len() > self.config.max_body_bytes {
            return Err(too_large(self.config.max_body_bytes));
        }
        let unreadable = |why: &str| {
            Rejection::new(
                502,
                "response-unreadable",
                IssueType::Exception,
                format!("the upstream's response is not {why}"),
            )
        };
        let response: Value = serde_json::from_slice(body).map_err(|_| unreadable("JSON"))?;
        if response
            .get("resourceType")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(unreadable("a FHIR resource"));
        }
        Ok(response)
    }

    /// Filters a decoded response body: [`Self::parse`] then [`Self::filter_value`].
    pub fn filter<'c>(
        &self,
        body: &[u8],
        caller: &Caller,
        single_read: bool,
        consents: &dyn Fn(&str) -> Consents<'c>,
        report: &mut Report,
    ) -> Filtered {
        match self.parse(body) {
            Ok(response) => self.filter_value(response, caller, single_read, consents, report),
            Err(rejection) => Filtered::Refused(rejection),
        }
    }

    /// Filters a parsed response. `single_read`: the request read one resource (a withheld
    /// one is refused rather than removed). `consents` gives each patient's Consents.
    pub fn filter_value<'c>(
        &self,
        response: Value,
        caller: &Caller,
        single_read: bool,
        consents: &dyn Fn(&str) -> Consents<'c>,
        report: &mut Report,
    ) -> Filtered {
        let known = Known {
            consents,
            contexts: &|_| SecurityContext::Unavailable,
        };
        self.filter_known(response, caller, single_read, &known, report)
    }

    /// [`Self::filter_value`] with the Binaries' security contexts known too.
    pub fn filter_known(
        &self,
        mut response: Value,
        caller: &Caller,
        single_read: bool,
        known: &Known,
        report: &mut Report,
    ) -> Filtered {
        let kind = response
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let labelled_before = report.part2_labelled;
        let changed = if kind == "Bundle" {
            self.filter_bundle(&mut response, caller, known, report)
        } else if kind == "OperationOutcome" {
            false
        } else {
            match self.treat(&mut response, caller, known, report) {
                Treatment::Withhold(reason) => {
                    *report.withheld.entry(reason).or_default() += 1;
                    return Filtered::Refused(self.refusal(single_read));
                }
                t => t != Treatment::Release || report.part2_labelled > labelled_before,
            }
        };
        if !changed {
            return Filtered::Unchanged;
        }
        match serde_json::to_vec(&response) {
            Ok(bytes) => Filtered::Rewritten(bytes),
            Err(_) => Filtered::Refused(Rejection::new(
                500,
                "response-unwritable",
                IssueType::Exception,
                "the filtered response could not be written",
            )),
        }
    }

    fn refusal(&self, single_read: bool) -> Rejection {
        if self.config.hide_existence && single_read {
            Rejection::new(404, "not-found", IssueType::NotFound, "resource not found")
        } else {
            Rejection::new(
                403,
                "consent-withheld",
                IssueType::Forbidden,
                "the patient's consent or the resource's security labels do not permit this access",
            )
        }
    }

    /// Returns whether the Bundle changed.
    fn filter_bundle(
        &self,
        bundle: &mut Value,
        caller: &Caller,
        known: &Known,
        report: &mut Report,
    ) -> bool {
        let kind = bundle
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        // In transaction and batch responses an entry is the answer to one request: keep the
        // entry (its response status), drop only the resource.
        let keep_entry = matches!(kind.as_str(), "transaction-response" | "batch-response");
        let Some(Value::Array(entries)) = bundle.get_mut("entry") else {
            return false;
        };
        let before_labels = report.part2_labelled;
        let mut changed = false;
        // Matches removed, for `total`.
        let mut removed = 0u32;
        let mut kept = Vec::with_capacity(entries.len());
        for mut entry in std::mem::take(entries) {
            // Only an OperationOutcome passes as an outcome: `search.mode` is the server's word,
            // and a resource marked `outcome` is filtered like any other.
            let is_outcome = entry
                .get("resource")
                .and_then(|r| r.get("resourceType"))
                .and_then(Value::as_str)
                == Some("OperationOutcome");
            // `total` counts matches only, not `_include`d resources or outcomes.
            let is_match = matches!(
                entry
                    .get("search")
                    .and_then(|s| s.get("mode"))
                    .and_then(Value::as_str),
                None | Some("match")
            );
            let treatment = match entry.get_mut("resource") {
                Some(resource) if !is_outcome => {
                    if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                        // A Bundle inside a Bundle (a document, a message): filtered alike.
                        if self.filter_bundle(resource, caller, known, report) {
                            changed = true;
                        }
                        Treatment::Release
                    } else {
                        self.treat(resource, caller, known, report)
                    }
                }
                _ => Treatment::Release,
            };
            match treatment {
                Treatment::Withhold(reason) => {
                    *report.withheld.entry(reason).or_default() += 1;
                    changed = true;
                    if keep_entry {
                        if let Some(obj) = entry.as_object_mut() {
                            obj.remove("resource");
                            obj.remove("fullUrl");
                        }
                        kept.push(entry);
                    } else if is_match {
                        removed += 1;
                    }
                }
                Treatment::Redact(..) => {
                    changed = true;
                    kept.push(entry);
                }
                Treatment::Release => kept.push(entry),
            }
        }
        let matches_kept = kept
            .iter()
            .filter(|e| {
                matches!(
                    e.get("search")
                        .and_then(|s| s.get("mode"))
                        .and_then(Value::as_str),
                    None | Some("match")
                ) && e
                    .get("resource")
                    .and_then(|r| r.get("resourceType"))
                    .and_then(Value::as_str)
                    != Some("OperationOutcome")
            })
            .count();
        *entries = kept;
        // `total` never counts what the caller cannot see: with the whole result in hand (one
        // page) and something removed it becomes what is left; on a page of a longer result
        // it goes, since other pages may hold withheld matches (`total: omit` takes it out
        // whenever anything was removed).
        let paged = cache::has_link(bundle, &["next", "previous", "prev"]);
        if kind == "searchset" {
            if let Some(obj) = bundle.as_object_mut() {
                match (self.config.total, obj.get("total").and_then(Value::as_u64)) {
                    (_, Some(_)) if paged => {
                        obj.remove("total");
                        changed = true;
                    }
                    (TotalPolicy::Adjust, Some(_)) if removed > 0 => {
                        obj.insert("total".into(), Value::from(matches_kept as u64));
                    }
                    (TotalPolicy::Omit, Some(_)) if removed > 0 => {
                        obj.remove("total");
                    }
                    _ => {}
                }
            }
        }
        changed || report.part2_labelled > before_labels
    }

    /// Decides one resource and applies a redaction or the Part 2 label in place.
    fn treat(
        &self,
        resource: &mut Value,
        caller: &Caller,
        known: &Known,
        report: &mut Report,
    ) -> Treatment {
        let mut worst: Option<(Action, &'static str)> = None;
        let mut redact: Vec<String> = Vec::new();
        let mut overridden = false;
        let mut judge = |action: Action, reason: &'static str, fields: &[String]| {
            if caller.break_glass && self.config.break_glass_overrides {
                overridden = true;
                return;
            }
            if action == Action::Redact {
                redact.extend(fields.iter().cloned());
            }
            if worst.is_none_or(|(a, _)| severity(action) > severity(a)) {
                worst = Some((action, reason));
            }
        };

        // A contained resource travels with its container: the strictest of their labels
        // decides for both (issue 15: a labelled resource inside an unlabelled one).
        let mut labels = labels_with_contained(resource);
        // A Binary is as sensitive as its security context, and belongs to its patients.
        let mut context_patients: Vec<String> = Vec::new();
        let mut context_unresolved = false;
        if self.restricting() {
            match binary_context(resource) {
                BinaryContext::None | BinaryContext::Patient => {}
                BinaryContext::Resource(reference) => match (known.contexts)(&reference) {
                    SecurityContext::Known(context) => {
                        labels.extend(labels_with_contained(context));
                        context_patients = patients_of(context);
                        context_unresolved = crate::smart::confine::unresolved_patient(context);
                    }
                    SecurityContext::Unavailable => {
                        judge(Action::Drop, "binary-context-unavailable", &[])
                    }
                },
                BinaryContext::Unfollowable => {
                    judge(Action::Drop, "binary-context-unavailable", &[])
                }
            }
        }
        if !labels.is_empty() {
            for rule in &self.config.labels {
                let labelled = rule
                    .codes
                    .iter()
                    .any(|code| labels.iter().any(|l| covers(code, l)));
                if labelled && !rule_allows(rule, caller) {
                    let reason = match rule.action {
                        Action::Redact => "label-redacted",
                        Action::Drop | Action::Refuse => "label-withheld",
                    };
                    judge(rule.action, reason, &rule.redact);
                }
            }
        }

        if let Some(source) = &self.config.consents {
            let access = Access {
                subject: caller.subject,
                client_id: caller.client_id,
                purpose: caller.purpose,
                now: caller.now,
            };
            // A patient named only by identifier (or on another server) has Consents no
            // lookup can find: withheld, not released unchecked (issue 15).
            if crate::smart::confine::unresolved_patient(resource) || context_unresolved {
                judge(Action::Drop, "consent-patient-unresolved", &[]);
            }
            let mut patients = patients_of(resource);
            patients.extend(context_patients);
            patients.sort();
            patients.dedup();
            for patient in patients {
                match (known.consents)(&patient) {
                    Consents::Unavailable if source.fail_open => {}
                    Consents::Unavailable => judge(Action::Drop, "consent-unavailable", &[]),
                    Consents::Known(list) => {
                        // Only the patient's own Consents, whatever the server's search returned.
                        let verdicts: Vec<Verdict> = list
                            .iter()
                            .filter(|c| consent_is_for(c, &patient))
                            .filter_map(|c| provision::decide(c, resource, &access))
                            .collect();
                        let denied = match source.conflict {
                            Conflict::DenyWins => verdicts.contains(&Verdict::Deny),
                            Conflict::PermitWins => {
                                verdicts.contains(&Verdict::Deny)
                                    && !verdicts.contains(&Verdict::Permit)
                            }
                        };
                        if denied {
                            judge(Action::Drop, "consent-denied", &[]);
                        }
                    }
                }
            }
        }

        if overridden {
            report.break_glass_released += 1;
        }
        let treatment = match worst {
            Some((Action::Drop | Action::Refuse, reason)) => return Treatment::Withhold(reason),
            Some((Action::Redact, reason)) => {
                if let Some(obj) = resource.as_object_mut() {
                    for field in &redact {
                        obj.remove(field);
                    }
                }
                add_label(resource, OBSERVATION_VALUE, "REDACTED", Some("redacted"));
                *report.redacted.entry(reason).or_default() += 1;
                Treatment::Redact(redact, reason)
            }
            None => Treatment::Release,
        };
        if let Some(part2) = &self.config.part2 {
            if part2
                .codes
                .iter()
                .any(|code| labels.iter().any(|l| covers(code, l)))
            {
                add_label(
                    resource,
                    &part2.system,
                    &part2.code,
                    Some("no redisclosure without consent directive (42 CFR Part 2)"),
                );
                report.part2_labelled += 1;
            }
        }
        treatment
    }
}

/// What a Binary's `securityContext` points at.
enum BinaryContext {
    /// Not a Binary, or a Binary without a security context: judged by its own labels.
    None,
    /// A Patient: the Binary is that patient's (its generated patient element).
    Patient,
    /// Another resource, `Type/id`, to be read.
    Resource(String),
    /// An absolute, conditional, contained or identifier-only reference: nothing to read.
    Unfollowable,
}

fn binary_context(resource: &Value) -> BinaryContext {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Binary") {
        return BinaryContext::None;
    }
    let Some(context) = resource.get("securityContext") else {
        return BinaryContext::None;
    };
    let Some(reference) = context.get("reference").and_then(Value::as_str) else {
        return BinaryContext::Unfollowable;
    };
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    let Some((t, id)) = reference.split_once('/') else {
        return BinaryContext::Unfollowable;
    };
    match crate::fhir::resource_type(t) {
        Some("Patient") => BinaryContext::Patient,
        Some(t) if crate::fhir::is_valid_id(id) => BinaryContext::Resource(format!("{t}/{id}")),
        _ => BinaryContext::Unfollowable,
    }
}

/// A resource's labels with its contained resources' (a contained resource travels with its
/// container: the strictest decides for both).
fn labels_with_contained(resource: &Value) -> Vec<labels::Label> {
    let mut labels = labels_of(resource);
    if let Some(Value::Array(contained)) = resource.get("contained") {
        for c in contained {
            labels.extend(labels_of(c));
        }
    }
    labels
}

/// Is this Consent about this patient (`Consent.patient` references `Patient/{id}`)?
pub(crate) fn consent_is_for(consent: &Value, patient: &str) -> bool {
    let reference = consent
        .get("patient")
        .and_then(|p| p.get("reference"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let path = reference.split("/_history/").next().unwrap_or(reference);
    path.rsplit_once("Patient/")
        .is_some_and(|(before, id)| (before.is_empty() || before.ends_with('/')) && id == patient)
}

/// Does a label rule let this caller see what it covers (its purpose or client is listed)?
fn rule_allows(rule: &config::LabelRuleConfig, caller: &Caller) -> bool {
    caller
        .purpose
        .is_some_and(|p| rule.allow_purposes.iter().any(|a| a == p))
        || caller
            .client_id
            .is_some_and(|c| rule.allow_clients.iter().any(|a| a == c))
}

/// Which responses the filter reads: those of FHIR interactions that return resources (not
/// capabilities, SMART configuration, CDS Hooks or passthrough paths).
pub fn filters_interaction(interaction: &str) -> bool {
    !matches!(
        interaction,
        "capabilities"
            | "smart-configuration"
            | "cds-discovery"
            | "cds-service"
            | "cds-feedback"
            | "passthrough"
    )
}

/// A write whose answer echoes the resource written.
pub fn is_write(interaction: &str) -> bool {
    matches!(
        interaction,
        "create"
            | "conditional-create"
            | "update"
            | "conditional-update"
            | "patch"
            | "conditional-patch"
    )
}

/// A write the FHIR server committed (a 2xx) stays committed when its echo is withheld: its
/// status is kept and its body becomes [`crate::outcome::committed_echo_withheld`], never a
/// refusal.
pub fn keeps_committed_write(write: bool, status: u16, filtered: &Filtered) -> bool {
    write && (200..300).contains(&status) && matches!(filtered, Filtered::Refused(_))
}

/// An error the FHIR server answered (not the gateway's own refusal, which is PHI-free) has
/// its body reduced to codes ([`crate::outcome::reduced_upstream_outcome`]).
pub fn reduces_error(status: u16, from_upstream: bool) -> bool {
    status >= 400 && from_upstream
}

/// A read of one resource: a withheld one is refused, not removed.
pub fn is_single_read(interaction: &str) -> bool {
    matches!(interaction, "read" | "vread")
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-11-24T12:00:00Z`), what Consent
/// periods are compared with.
pub fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn too_large(limit: usize) -> Rejection {
    Rejection::new(
        502,
        "response-too-large",
        IssueType::TooCostly,
        format!("the response is larger than the consent filter's limit of {limit} bytes"),
    )
}

/// Calls `f` on the response (when it is not a Bundle) or on each entry's resource, at any
/// depth of Bundles.
fn for_each_resource(value: &Value, f: &mut dyn FnMut(&Value)) {
    if value.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        if let Some(Value::Array(entries)) = value.get("entry") {
            for e in entries {
                if let Some(r) = e.get("resource") {
                    for_each_resource(r, f);
                }
            }
        }
    } else {
        f(value);
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

#[cfg(test)]
#[path = "property_tests.rs"]
mod property_tests;
