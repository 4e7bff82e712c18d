//! The OpenCL rows of `lava-flow selftest` and `lava-flow bench`, end to end. OpenCL interop
//! exists only on the GPU machine: elsewhere the selftest rows must all be "unavailable" errors.
#![cfg(feature = "opencl")]

use lava_flow::opencl::ClContext;
use lava_flow::VulkanContext;
use lava_flow_diag::testing;
use lava_flow_diag::{bench::opencl as bench, selftest::opencl as selftest};

#[test]
fn selftest_paths_pass_or_are_unavailable() {
    let Some(vk) = testing::or_skip("vulkan", VulkanContext::new()) else { return };
    let cases = selftest::selftest(&vk);
    assert_eq!(cases.len(), 4, "{cases:?}");
    let available = ClContext::for_identity(&vk.identity());
    if let Err(e) = &available {
        for case in &cases {
            let err = case.result.as_ref().expect_err("no OpenCL device, so no path can pass");
            assert!(err.is_unavailable(), "{}: {err}", case.path);
        }
        testing::skip("opencl", e);
        return;
    }
    for case in &cases {
        match &case.result {
            Ok(detail) => println!("PASS {}: {detail}", case.path),
            Err(e) => panic!("{} failed: {e}", case.path),
        }
    }
}

#[test]
fn bench_rows_are_measured() {
    let Some(vk) = testing::or_skip("vulkan", VulkanContext::new()) else { return };
    if testing::or_skip("opencl", ClContext::for_identity(&vk.identity())).is_none() {
        return;
    }
    let mut rows = bench::import_latency(&vk, &[1 << 16, 1 << 24], 5).unwrap();
    rows.extend(bench::copy_bandwidth(&vk, 64 << 20, 10).unwrap());
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        let (Some(lava_flow), Some(raw), Some(ratio)) = (r.lava_flow, r.raw, r.ratio) else { panic!("{r:?}") };
        assert!(lava_flow > 0.0 && raw > 0.0 && ratio.is_finite(), "{r:?}");
        println!("{}", serde_json::to_string(r).unwrap());
    }
}
