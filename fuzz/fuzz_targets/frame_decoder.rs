//! `ImageFrame` decoding (metadata checks, raw sizes, every encoding: packed,
//! YUV, mono16 depth, JPEG/PNG/WebP/BMP) on arbitrary
//! bytes: see `da3_testkit::fuzz::frame_decoder` for the input layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    da3_testkit::fuzz::init();
    let _ = da3_testkit::fuzz::frame_decoder(data);
});
