//! The wire decoder against arbitrary bytes (see `checks::decode_message`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lava_flow_fuzz::checks::decode_message(data));
