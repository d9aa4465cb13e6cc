//! No panic crosses into Envoy: every hook runs inside [`catching`], and a
//! panic is logged by where it happened (never its message, which could quote a request).

use crate::abi::{self, LogLevel};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        abi::log(LogLevel::Error, &format!("fhirgate: panic at {place}"));
    }));
}

/// Runs `f`; `None` if it panicked. The state it touched is not used again by the caller (a
/// failed stream is answered and let be), which is what makes unwinding out of it sound.
pub fn catching<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}
