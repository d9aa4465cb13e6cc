//! The audit core's work per request, for callgrind: build a record from facts, seal it into
//! the chain with its log line (what the filter does in Envoy's log callback, host calls aside).
//!
//! `audit_bench ITERATIONS`: run with 0 and N under callgrind; the difference over N is the cost.

use fhirgate_core::audit::chain::Chain;
use fhirgate_core::audit::{record, Facts};
use std::hint::black_box;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(Ok(iterations)) = std::env::args().nth(1).map(|n| n.parse::<u64>()) else {
        eprintln!("usage: audit_bench ITERATIONS");
        return ExitCode::from(2);
    };
    let mut chain = Chain::new("bench", "k1", vec![7; 32]);
    let mut bytes = 0usize;
    for i in 0..iterations {
        let facts = Facts {
            request_id: Some("6f1c2a9e-8a43-4c1b-9d0e-3b5f7a2c1d00"),
            started_ms: 1_795_521_600_000 + i,
            duration_ms: 3,
            method: Some("GET"),
            interaction: Some("read"),
            resource_type: Some("Patient"),
            resource_id: Some("123"),
            patient: Some("123"),
            subject: Some("dr-bench"),
            client_id: Some("bench-app"),
            scopes: Some("launch/patient user/Patient.rs user/Observation.rs"),
            source_ip: Some("127.0.0.1"),
            user_agent: Some("h2load nghttp2/1.52.0"),
            status: 200,
            ..Facts::default()
        };
        let (_sealed, line) = chain.seal_line(record(black_box(&facts), "/fhir/r4", None));
        bytes += line.len();
    }
    println!("{bytes}");
    ExitCode::SUCCESS
}
