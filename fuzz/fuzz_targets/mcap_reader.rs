//! The MCAP recording reader (MCAP framing and chunks, `da3.Record`
//! protobuf, payloads rebuilt from Foxglove messages or decoded from Arrow
//! IPC, metadata JSON) on arbitrary bytes: see `da3_testkit::fuzz::mcap_reader`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    da3_testkit::fuzz::init();
    let _ = da3_testkit::fuzz::mcap_reader(data);
});
