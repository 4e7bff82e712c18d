//! `Uuid::parse` (see `checks::uuid_parse`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lava_flow_fuzz::checks::uuid_parse(data));
