//! Drives the routing policy over a request mix, for callgrind's instruction counts.
//!
//! `route_bench CONFIG URIS ITERATIONS`: each iteration routes every URI once. Run it with 0
//! and with N iterations under callgrind; the difference divided by N × URIs is the cost of
//! one `route()` call, setup excluded.

use fhirgate_core::routing::{RequestHead, RoutingPolicy};
use std::hint::black_box;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, uris, iterations] = args.as_slice() else {
        eprintln!("usage: route_bench CONFIG URIS ITERATIONS");
        return ExitCode::from(2);
    };
    let Ok(config) = std::fs::read(config) else {
        return ExitCode::from(2);
    };
    let Ok(uris) = std::fs::read_to_string(uris) else {
        return ExitCode::from(2);
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        return ExitCode::from(2);
    };
    let policy = match RoutingPolicy::from_json(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let paths: Vec<&str> = uris.lines().filter(|l| !l.is_empty()).collect();
    let mut allowed = 0u64;
    for _ in 0..iterations {
        for path in &paths {
            let head = RequestHead {
                method: "GET",
                path,
                ..RequestHead::default()
            };
            if let Ok(routed) = policy.route(black_box(&head)) {
                allowed += black_box(routed.facts()).len() as u64;
            }
        }
    }
    println!("{allowed}");
    ExitCode::SUCCESS
}
