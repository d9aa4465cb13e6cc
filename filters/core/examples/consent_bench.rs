//! Drives the consent filter over a response, for callgrind's instruction counts.
//!
//! `consent_bench CONFIG RESPONSE CONSENTS ITERATIONS`: each iteration filters the response
//! (a JSON file: a search Bundle or one resource) as the filter does on a response whose
//! Consents are cached (CONSENTS: a JSON object, patient id → list of Consents). Run it with 0
//! and N iterations under callgrind; the difference divided by N is the cost of one response.

use fhirgate_core::consent::{Caller, ConsentPolicy, Consents, FastPath, Filtered, Report};
use std::hint::black_box;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, response, consents, iterations] = args.as_slice() else {
        eprintln!("usage: consent_bench CONFIG RESPONSE CONSENTS ITERATIONS");
        return ExitCode::from(2);
    };
    let (Ok(config), Ok(response), Ok(consents)) = (
        std::fs::read(config),
        std::fs::read(response),
        std::fs::read(consents),
    ) else {
        return ExitCode::from(2);
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        return ExitCode::from(2);
    };
    let policy = match ConsentPolicy::from_json(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Ok(serde_json::Value::Object(consents)) =
        serde_json::from_slice::<serde_json::Value>(&consents)
    else {
        return ExitCode::from(2);
    };
    let lookup = |patient: &str| match consents.get(patient).and_then(serde_json::Value::as_array) {
        Some(list) => Consents::Known(list.as_slice()),
        None => Consents::Known(&[]),
    };
    let caller = Caller {
        subject: Some("dr-bench"),
        client_id: Some("bench"),
        purpose: Some("HPAYMT"),
        break_glass: false,
        now: "2026-11-24T12:00:00Z",
    };
    let mut bytes_out = 0usize;
    for _ in 0..iterations {
        // As the filter does: a byte scan first, parsing only when it cannot settle it.
        if policy.fast_path(black_box(&response), &|p| Some(lookup(p))) == FastPath::Release {
            bytes_out += response.len();
            continue;
        }
        let mut report = Report::default();
        let Ok(parsed) = policy.parse(black_box(&response)) else {
            return ExitCode::from(1);
        };
        match policy.filter_value(parsed, &caller, false, &lookup, &mut report) {
            Filtered::Rewritten(b) => bytes_out += b.len(),
            Filtered::Unchanged => bytes_out += response.len(),
            Filtered::Refused(_) => return ExitCode::from(1),
        }
    }
    println!("{bytes_out}");
    ExitCode::SUCCESS
}
