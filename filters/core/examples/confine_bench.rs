//! Drives the authorization filter's response check under `patient/` scopes, for callgrind's
//! instruction counts.
//!
//! `confine_bench RESPONSE PATIENT ITERATIONS [parse]`: each iteration does what the filter does
//! with a held response body of a confined request: parse it and verify it resource by resource
//! for the launch patient (`fhirgate_core::smart::confine`); with `parse`, only the parse. Run
//! it with 0 and N iterations under callgrind; the difference divided by N is the cost of one
//! response.

use fhirgate_core::smart::confine::verify_response;
use std::hint::black_box;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (response, patient, iterations, parse_only) = match args.as_slice() {
        [_, r, p, n] => (r, p, n, false),
        [_, r, p, n, mode] if mode == "parse" => (r, p, n, true),
        _ => {
            eprintln!("usage: confine_bench RESPONSE PATIENT ITERATIONS [parse]");
            return ExitCode::from(2);
        }
    };
    let (Ok(response), Ok(iterations)) = (std::fs::read(response), iterations.parse::<u64>())
    else {
        return ExitCode::from(2);
    };
    let mut released = 0u64;
    for _ in 0..iterations {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(black_box(&response)) else {
            return ExitCode::from(3);
        };
        released +=
            u64::from(parse_only || verify_response(&body, black_box(patient), &[]).is_ok());
        black_box(&body);
    }
    if released != iterations {
        eprintln!("the response was not released: {released} of {iterations}");
        return ExitCode::from(4);
    }
    ExitCode::SUCCESS
}
