//! The GL rows of `lava-flow selftest` and `lava-flow bench` run end to end on this machine's
//! drivers (llvmpipe here, NVIDIA on the GPU machine).
#![cfg(feature = "gl")]

use lava_flow::gl::GlContext;
use lava_flow::VulkanContext;
use lava_flow_diag::testing;
use lava_flow_diag::{bench::gl as bench, selftest::gl as selftest};

#[test]
fn selftest_paths_pass() {
    let Some(vk) = testing::or_skip("vulkan", VulkanContext::new()) else { return };
    if testing::or_skip("gl", GlContext::for_identity(&vk.identity())).is_none() {
        return;
    }
    let cases = selftest::selftest(&vk);
    assert_eq!(cases.len(), 4, "{cases:?}");
    for case in &cases {
        match &case.result {
            Ok(detail) => println!("PASS {}: {detail}", case.path),
            Err(e) => panic!("{} failed: {e}", case.path),
        }
    }
}

#[test]
fn import_latency_rows_are_measured() {
    let Some(vk) = testing::or_skip("vulkan", VulkanContext::new()) else { return };
    if testing::or_skip("gl", GlContext::for_identity(&vk.identity())).is_none() {
        return;
    }
    let rows = bench::import_latency(&vk, &[4096, 1 << 20], 5).unwrap();
    assert_eq!(rows.len(), 3, "two buffer sizes and a texture: {rows:?}");
    for r in &rows {
        let (Some(lava_flow), Some(raw), Some(ratio)) = (r.lava_flow, r.raw, r.ratio) else { panic!("{r:?}") };
        assert!(lava_flow > 0.0 && raw > 0.0 && ratio.is_finite(), "{r:?}");
        assert_eq!(r.unit, "us");
        println!("{}", serde_json::to_string(r).unwrap());
    }
}
