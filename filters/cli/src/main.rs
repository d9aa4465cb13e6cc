//! `fhirgate`: the filters' core logic on the command line, for operators and tests.
//!
//! Every subcommand calls the same core functions the Wasm filters run in Envoy.

use clap::{Parser, Subcommand, ValueEnum};
use fhirgate_core::ratelimit::breakglass;
use fhirgate_core::ratelimit::classify::{Caller, RateLimitPolicy};
use fhirgate_core::routing::{RequestHead, RoutingPolicy};
use fhirgate_core::smart::authz::AuthzPolicy;
use fhirgate_core::smart::check;
use serde_json::json;
use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fhirgate",
    version,
    about = "fhirgate: FHIR gateway filters for Envoy, on the command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse a request as the routing filter does and print it as JSON.
    Route {
        /// HTTP method (GET, POST, PUT, PATCH, DELETE).
        method: String,
        /// Path and query as on the wire (`/fhir/r4/Patient?name=x`), or a full URL.
        url: String,
        /// Routing filter config (JSON); the defaults when absent.
        #[arg(long)]
        config: Option<String>,
        /// Request header, `Name: value`; repeatable.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Request body file, or `-` for standard input.
        #[arg(long)]
        body: Option<String>,
    },
    /// SMART scope tools.
    Scope {
        #[command(subcommand)]
        command: ScopeCommand,
    },
    /// SMART authorization tools.
    Authz {
        #[command(subcommand)]
        command: AuthzCommand,
    },
    /// Rate-limit classification tools.
    Ratelimit {
        #[command(subcommand)]
        command: RatelimitCommand,
    },
    /// Break-glass (emergency access) tools for operators.
    Breakglass {
        #[command(subcommand)]
        command: BreakglassCommand,
    },
    /// Consent filtering tools.
    Consent {
        #[command(subcommand)]
        command: ConsentCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Filter configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ScopeCommand {
    /// Parse one SMART scope and print it as JSON: valid, context, resource, permissions
    /// (in-order subset of cruds; v1 normalised), params, resource_scope.
    Parse { scope: String },
}

#[derive(Subcommand)]
enum AuthzCommand {
    /// Decide requests read as JSON lines on stdin, one JSON decision line each on stdout:
    /// in {"method", "path" (relative to the FHIR base), "query", "scopes", "patient"?,
    /// "token"?, "body"?, "response"?}; out {"decision", "status", "reason", "needs"?, "query"?}.
    Check {
        /// Authorization config (JSON); the shipped envoy/authz.json when absent.
        #[arg(long)]
        config: Option<String>,
    },
}

#[derive(Subcommand)]
enum RatelimitCommand {
    /// Classify requests read as JSON lines on stdin: in {"method", "path" (relative to the
    /// FHIR base), "query", "body"?, "tenant"?, "subject"?, "clientId"?, "backend"?, "peer"?};
    /// out {"class", "key", "weight", "limit", "windowSeconds"} (limit null: not limited).
    Classify {
        /// Rate-limit config (JSON); the defaults when absent.
        #[arg(long)]
        config: Option<String>,
    },
    /// Print the descriptor file (YAML) for the standard rate-limit service
    /// (envoyproxy/ratelimit) matching a rate-limit config: the same tiers, counted across
    /// every replica.
    Descriptors {
        /// Rate-limit config (JSON); the shipped envoy/ratelimit.json when absent.
        #[arg(long)]
        config: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConsentCommand {
    /// Filter a FHIR response (stdin) as the consent filter would and print
    /// {"status", "body"?, "outcome"?, "report"}. The context file is JSON: {"subject"?,
    /// "clientId"?, "purpose"?, "breakGlass"?, "now"? (RFC 3339), "singleRead"?, "consents"?:
    /// {"<patient id>": [Consent, ...]}, "securityContexts"?: {"<Type/id>": resource}}; a
    /// patient missing from "consents", or a Binary's security context missing from
    /// "securityContexts", counts as a failed fetch.
    Apply {
        /// Consent config (JSON); the shipped envoy/consent.json when absent.
        #[arg(long)]
        config: Option<String>,
        /// The request context (JSON file).
        #[arg(long)]
        context: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit log (JSON lines, as written to the collector or extracted from Envoy's
    /// log) against its HMAC chains; exits 1 naming the first line that was deleted around,
    /// reordered or edited.
    Verify {
        /// The log file, or `-` for standard input.
        file: String,
        /// File holding a chain key (raw bytes; or base64 with --base64).
        #[arg(long)]
        key_file: String,
        /// The key id the records name.
        #[arg(long)]
        kid: String,
        /// The key file holds base64.
        #[arg(long)]
        base64: bool,
    },
}

#[derive(Subcommand)]
enum BreakglassCommand {
    /// Sign a break-glass token with an HMAC-SHA256 key (at least 32 bytes).
    Sign {
        /// File holding the key.
        #[arg(long)]
        key_file: String,
        /// Key id the gateway knows the key by.
        #[arg(long)]
        kid: String,
        /// The clinician the emergency access is for.
        #[arg(long)]
        user: String,
        /// Reason code, e.g. ETREAT.
        #[arg(long)]
        reason: String,
        /// Validity in seconds (at most a day).
        #[arg(long, default_value_t = 900)]
        ttl: i64,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a filter config with the code the filter runs in on_configure.
    Lint {
        /// Config file (JSON), or `-` for standard input.
        file: String,
        /// Which filter the config is for.
        #[arg(long, value_enum, default_value_t = Filter::Routing)]
        filter: Filter,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Filter {
    Routing,
    Authz,
    Ratelimit,
    Consent,
    Audit,
    /// A `fhirgate.wasm` configuration: a section per stage it runs.
    Module,
}

/// The shipped configs, the CLI's defaults: what `fhirgate` decides is what the example
/// gateway decides.
const SHIPPED_ROUTING: &str = include_str!("../../../envoy/routing.json");
const SHIPPED_AUTHZ: &str = include_str!("../../../envoy/authz.json");
const SHIPPED_RATELIMIT: &str = include_str!("../../../envoy/ratelimit.json");
const SHIPPED_CONSENT: &str = include_str!("../../../envoy/consent.json");

/// Applies `f` to each JSON-object line of stdin, writing one JSON line each (`invalid` for a
/// line that is not a JSON object).
fn json_lines(
    invalid: serde_json::Value,
    f: impl Fn(&serde_json::Value) -> serde_json::Value,
) -> Result<String, String> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(input) if input.is_object() => f(&input),
            _ => invalid.clone(),
        };
        writeln!(out, "{answer}").map_err(|e| format!("writing stdout: {e}"))?;
    }
    Ok(String::new())
}

fn ratelimit_classify(config: Option<&str>) -> Result<String, String> {
    let bytes = match config {
        Some(path) => read_input(path)?,
        None => Vec::new(),
    };
    let policy = RateLimitPolicy::from_json(&bytes).map_err(|e| e.to_string())?;
    let routing =
        RoutingPolicy::from_json(SHIPPED_ROUTING.as_bytes()).map_err(|e| e.to_string())?;
    json_lines(json!({"error": "invalid-input-line"}), |input| {
        let text = |k: &str| input.get(k).and_then(serde_json::Value::as_str);
        let method = text("method").unwrap_or("GET");
        let query = text("query").unwrap_or("");
        let path = text("path").unwrap_or("");
        let relative = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        match check::route_relative(&routing, method, &relative, input.get("body")) {
            Err(rejection) => json!({"error": rejection.reason, "status": rejection.status}),
            Ok((routed, _)) => {
                let caller = Caller {
                    tenant: text("tenant"),
                    subject: text("subject"),
                    client_id: text("clientId"),
                    backend: input
                        .get("backend")
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(false),
                    peer: text("peer"),
                };
                let c = policy.classify(&routed, &caller);
                json!({"class": c.class.name(), "key": c.key, "weight": c.weight,
                       "limit": c.tier.map(|t| t.limit), "windowSeconds": c.tier.map(|t| t.window_seconds)})
            }
        }
    })
}

fn ratelimit_descriptors(config: Option<&str>) -> Result<String, String> {
    let bytes = match config {
        Some(path) => read_input(path)?,
        None => SHIPPED_RATELIMIT.as_bytes().to_vec(),
    };
    let policy = RateLimitPolicy::from_json(&bytes).map_err(|e| e.to_string())?;
    fhirgate_core::ratelimit::descriptors::service_config(&policy.config)
        .map(|yaml| yaml.trim_end().to_string())
        .map_err(|e| e.to_string())
}

fn consent_apply(config: Option<&str>, context: &str) -> Result<String, String> {
    use fhirgate_core::consent::{
        Caller, ConsentPolicy, Consents, Filtered, Known, Report, SecurityContext,
    };
    let bytes = match config {
        Some(path) => read_input(path)?,
        None => SHIPPED_CONSENT.as_bytes().to_vec(),
    };
    let policy = ConsentPolicy::from_json(&bytes).map_err(|e| e.to_string())?;
    let ctx: serde_json::Value =
        serde_json::from_slice(&read_input(context)?).map_err(|e| format!("{context}: {e}"))?;
    let text = |k: &str| ctx.get(k).and_then(serde_json::Value::as_str);
    let now = match text("now") {
        Some(now) => now.to_string(),
        None => fhirgate_core::consent::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs() as i64,
        ),
    };
    let caller = Caller {
        subject: text("subject"),
        client_id: text("clientId"),
        purpose: text("purpose"),
        break_glass: ctx
            .get("breakGlass")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        now: &now,
    };
    let single_read = ctx
        .get("singleRead")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let consents = ctx.get("consents").and_then(serde_json::Value::as_object);
    let lookup = |patient: &str| match consents
        .and_then(|c| c.get(patient))
        .and_then(serde_json::Value::as_array)
    {
        Some(list) => Consents::Known(list.as_slice()),
        None => Consents::Unavailable,
    };
    let contexts = ctx
        .get("securityContexts")
        .and_then(serde_json::Value::as_object);
    let context = |reference: &str| match contexts.and_then(|c| c.get(reference)) {
        Some(resource) => SecurityContext::Known(resource),
        None => SecurityContext::Unavailable,
    };
    let known = Known {
        consents: &lookup,
        contexts: &context,
    };
    let response = read_input("-")?;
    let mut report = Report::default();
    let result = policy
        .decode(None, &response)
        .and_then(|body| policy.parse(&body))
        .map(|value| policy.filter_known(value, &caller, single_read, &known, &mut report));
    let report_json = json!({"withheld": report.withheld, "redacted": report.redacted, "part2Labelled": report.part2_labelled,
                             "breakGlassReleased": report.break_glass_released});
    let out = match result {
        Err(rejection) | Ok(Filtered::Refused(rejection)) => {
            json!({"status": rejection.status, "reason": rejection.reason, "outcome": rejection.outcome.to_value(), "report": report_json})
        }
        Ok(Filtered::Unchanged) => {
            let body: serde_json::Value =
                serde_json::from_slice(&response).map_err(|e| e.to_string())?;
            json!({"status": 200, "changed": false, "body": body, "report": report_json})
        }
        Ok(Filtered::Rewritten(bytes)) => {
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            json!({"status": 200, "changed": true, "body": body, "report": report_json})
        }
    };
    Ok(out.to_string())
}

fn audit_verify(file: &str, key_file: &str, kid: &str, is_base64: bool) -> Result<String, String> {
    use base64::Engine;
    let raw = read_input(key_file)?;
    let key = if is_base64 {
        base64::engine::general_purpose::STANDARD
            .decode(raw.trim_ascii())
            .map_err(|e| format!("{key_file}: {e}"))?
    } else {
        raw
    };
    let log = String::from_utf8(read_input(file)?).map_err(|_| format!("{file}: not UTF-8"))?;
    let keys = std::collections::HashMap::from([(kid.to_string(), key)]);
    match fhirgate_core::audit::chain::verify(&log, &keys) {
        Ok(n) => Ok(format!("{file}: {n} records, every chain intact")),
        Err(e) => Err(format!("{file}: {e}")),
    }
}

fn breakglass_sign(
    key_file: &str,
    kid: &str,
    user: &str,
    reason: &str,
    ttl: i64,
) -> Result<String, String> {
    let key = read_input(key_file)?;
    let key = key.trim_ascii();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    if !(1..=breakglass::MAX_VALIDITY_SECONDS).contains(&ttl) {
        return Err(format!(
            "--ttl must be between 1 and {}",
            breakglass::MAX_VALIDITY_SECONDS
        ));
    }
    let mut nonce = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let claims = breakglass::BreakGlass {
        kid: kid.into(),
        user: user.into(),
        reason: reason.into(),
        exp: now + ttl,
        nonce: fhirgate_core::hex::lower(&nonce),
    };
    breakglass::sign(&claims, key)
}

fn authz_check(config: Option<&str>) -> Result<String, String> {
    let config_bytes = match config {
        Some(path) => read_input(path)?,
        None => SHIPPED_AUTHZ.as_bytes().to_vec(),
    };
    let authz = AuthzPolicy::from_json(&config_bytes).map_err(|e| e.to_string())?;
    let routing =
        RoutingPolicy::from_json(SHIPPED_ROUTING.as_bytes()).map_err(|e| e.to_string())?;
    json_lines(
        json!({"decision": "deny", "status": 400, "reason": "invalid-input-line"}),
        |input| check::check(&routing, &authz, input),
    )
}

fn read_input(path: &str) -> Result<Vec<u8>, String> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading stdin: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))
    }
}

/// `https://host/fhir/r4/Patient?x` → `/fhir/r4/Patient?x`; a path is kept as is.
fn path_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

fn route(
    method: &str,
    url: &str,
    config: Option<&str>,
    headers: &[String],
    body: Option<&str>,
) -> Result<serde_json::Value, String> {
    let config_bytes = match config {
        Some(path) => read_input(path)?,
        None => Vec::new(),
    };
    let policy = RoutingPolicy::from_json(&config_bytes).map_err(|e| e.to_string())?;
    let mut parsed_headers = Vec::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` is not `Name: value`"))?;
        parsed_headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        parsed_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body_bytes = match body {
        Some(path) => Some(read_input(path)?),
        None => None,
    };
    let head = RequestHead {
        method,
        path: path_of(url),
        content_type: header("content-type"),
        content_length: header("content-length"),
        has_body: body_bytes.as_ref().is_some_and(|b| !b.is_empty()),
        if_none_exist: header("if-none-exist").is_some(),
        method_override: fhirgate_core::headers::METHOD_OVERRIDE
            .iter()
            .any(|h| header(h).is_some()),
    };
    let result = policy.route(&head).and_then(|mut routed| {
        if routed.awaiting_body {
            policy.route_body(&mut routed, body_bytes.as_deref().unwrap_or_default())?;
        }
        Ok(routed)
    });
    Ok(match result {
        Ok(routed) => json!({ "decision": "allow", "request": routed.to_json() }),
        Err(rejection) => json!({
            "decision": "deny",
            "status": rejection.status,
            "reason": rejection.reason,
            "headers": rejection.headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "outcome": rejection.outcome.to_value(),
        }),
    })
}

fn lint(file: &str, filter: Filter) -> Result<String, String> {
    let bytes = read_input(file)?;
    // The same compile step each filter runs in on_configure.
    let (name, result) = match filter {
        Filter::Routing => ("routing", RoutingPolicy::from_json(&bytes).map(drop)),
        Filter::Authz => (
            "authz",
            fhirgate_core::smart::filter::AuthzFilterPolicy::from_json(&bytes).map(drop),
        ),
        Filter::Ratelimit => (
            "ratelimit",
            fhirgate_core::ratelimit::filter::RateLimitFilterPolicy::from_json(&bytes).map(drop),
        ),
        Filter::Consent => (
            "consent",
            fhirgate_core::consent::ConsentPolicy::from_json(&bytes).map(drop),
        ),
        Filter::Audit => (
            "audit",
            fhirgate_core::audit::sink::AuditPolicy::from_json(&bytes).map(drop),
        ),
        Filter::Module => (
            "module",
            fhirgate_core::pipeline::check_module(&bytes).map(drop),
        ),
    };
    result
        .map(|()| format!("{file}: valid {name} config"))
        .map_err(|e| format!("{file}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Route {
            method,
            url,
            config,
            headers,
            body,
        } => route(&method, &url, config.as_deref(), &headers, body.as_deref())
            .map(|v| v.to_string()),
        Command::Scope {
            command: ScopeCommand::Parse { scope },
        } => Ok(fhirgate_core::smart::scope::describe(&scope).to_string()),
        Command::Authz {
            command: AuthzCommand::Check { config },
        } => authz_check(config.as_deref()),
        Command::Ratelimit {
            command: RatelimitCommand::Classify { config },
        } => ratelimit_classify(config.as_deref()),
        Command::Ratelimit {
            command: RatelimitCommand::Descriptors { config },
        } => ratelimit_descriptors(config.as_deref()),
        Command::Breakglass {
            command:
                BreakglassCommand::Sign {
                    key_file,
                    kid,
                    user,
                    reason,
                    ttl,
                },
        } => breakglass_sign(&key_file, &kid, &user, &reason, ttl),
        Command::Consent {
            command: ConsentCommand::Apply { config, context },
        } => consent_apply(config.as_deref(), &context),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    key_file,
                    kid,
                    base64,
                },
        } => audit_verify(&file, &key_file, &kid, base64),
        Command::Config {
            command: ConfigCommand::Lint { file, filter },
        } => lint(&file, filter),
    };
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fhirgate: {err}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_scheme_and_host_from_urls() {
        assert_eq!(
            path_of("https://gw.example/fhir/r4/Patient?x=1"),
            "/fhir/r4/Patient?x=1"
        );
        assert_eq!(path_of("http://gw.example"), "/");
        assert_eq!(path_of("/fhir/r4/Patient"), "/fhir/r4/Patient");
    }

    #[test]
    fn routes_a_read_to_allow() {
        let v = route("GET", "/fhir/r4/Patient/1", None, &[], None).unwrap();
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["request"]["interaction"], "read");
    }

    #[test]
    fn shipped_configs_compile() {
        assert!(RoutingPolicy::from_json(SHIPPED_ROUTING.as_bytes()).is_ok());
        assert!(AuthzPolicy::from_json(SHIPPED_AUTHZ.as_bytes()).is_ok());
    }

    #[test]
    fn routes_a_bad_method_to_deny_with_allow_header() {
        let v = route("POST", "/fhir/r4/Patient/1", None, &[], None).unwrap();
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["status"], 405);
        assert_eq!(v["headers"]["allow"], "GET, PUT, PATCH, DELETE");
    }
}
