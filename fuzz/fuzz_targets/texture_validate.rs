//! `TextureDescription::validate` and the wire's texture checks (see `checks::texture_validate`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lava_flow_fuzz::checks::texture_validate(data));
