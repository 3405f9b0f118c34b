//! The recording reader (Arrow IPC stream, payloads, metadata JSON) on
//! arbitrary bytes: see `da3_testkit::fuzz::recording_reader`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    da3_testkit::fuzz::init();
    let _ = da3_testkit::fuzz::recording_reader(data);
});
