//! REST bodies arrive from anyone: every body type the API accepts must reject bad input
//! with an error, never a panic, and the validators must accept or refuse without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    confab::http::fuzz_bodies(data);
});
