//! The JSON form of every description (see `checks::description_json`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lava_flow_fuzz::checks::description_json(data));
