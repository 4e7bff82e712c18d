//! CUDA device discovery and pairing with Vulkan by UUID, the loader's behaviour without
//! libcuda, every self-test path, and one quick benchmark run. Runs everywhere: without CUDA the
//! checks that need it skip with the reason.

mod cuda_common;

use cuda_common::devices;
use lava_flow::cuda::{list_devices, load_driver, CudaDevice};
use lava_flow::{Error, VulkanContext};
use lava_flow_diag::testing;
use lava_flow_diag::{bench::cuda as bench, selftest::cuda as selftest};

#[test]
fn without_libcuda_every_entry_point_is_an_error_not_a_panic() {
    let missing = matches!(load_driver(), Err(Error::LibraryUnavailable { .. }));
    let results = [
        ("list_devices", list_devices().map(|_| ())),
        ("open", CudaDevice::open(0).map(|_| ())),
        ("with_uuid", CudaDevice::with_uuid(Default::default()).map(|_| ())),
    ];
    for (what, r) in results {
        match r {
            Err(Error::LibraryUnavailable { library, .. }) => {
                assert!(missing, "{what}: libcuda loaded, yet reported missing");
                assert_eq!(library, "libcuda.so.1");
            }
            other => assert!(!missing, "{what}: without libcuda the error must say so, got {other:?}"),
        }
    }
    if missing {
        match bench::run(&bench::BenchConfig::quick()) {
            Err(e) => assert!(matches!(e, Error::LibraryUnavailable { .. }), "{e}"),
            Ok(rows) => panic!("a benchmark ran without CUDA: {rows:?}"),
        }
        for report in selftest::selftest_paths() {
            let e = report.outcome.expect_err(report.path);
            assert!(e.is_unavailable(), "{}: {e}", report.path);
        }
        testing::skip("cuda", "libcuda.so.1 is not loadable here (checked that every entry point says so)");
    }
}

#[test]
fn cuda_devices_pair_with_vulkan_devices_by_uuid() {
    let Some((ctx, cuda)) = devices() else { return };
    let list = list_devices().unwrap();
    assert!(!list.is_empty());
    let me = list.iter().find(|d| d.ordinal == cuda.ordinal()).expect("the open device is listed");
    assert_eq!(me.uuid, cuda.uuid());
    assert!(!me.uuid.is_nil());
    assert_eq!(me.vulkan_device, Some(ctx.info().index), "{me:?}");
    let vulkan = VulkanContext::enumerate().unwrap();
    for d in &list {
        if let Some(i) = d.vulkan_device {
            assert_eq!(vulkan[i].identity.device_uuid, d.uuid);
        }
    }
    let json = serde_json::to_value(&list).unwrap();
    assert_eq!(json[0]["uuid"].as_str().unwrap().len(), 36);
}

#[test]
fn every_selftest_path_passes() {
    let Some((ctx, _cuda)) = devices() else { return };
    let reports = selftest::selftest_paths_on(&ctx);
    assert_eq!(reports.len(), selftest::PATHS.len());
    let failed: Vec<String> =
        reports.iter().filter_map(|r| r.outcome.as_ref().err().map(|e| format!("{}: {e}", r.path))).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn quick_benchmark_measures_every_case() {
    let Some(_) = devices() else { return };
    let rows = bench::run(&bench::BenchConfig::quick()).unwrap();
    for r in &rows {
        println!("{r:?}");
    }
    assert!(rows.iter().any(|r| r.case.starts_with("copy-bandwidth/memcpy")));
    assert!(rows.iter().any(|r| r.case.starts_with("export-import-map/")));
    assert!(rows.iter().any(|r| r.case == "semaphore-round-trip/timeline"));
    assert!(rows.iter().any(|r| r.case.starts_with("share-vs-copy/host/")));
    for r in &rows {
        assert!(r.error.is_none(), "{}: {:?}", r.case, r.error);
        assert_eq!(r.group, "cuda");
        let (Some(lava_flow), Some(raw), Some(ratio)) = (r.lava_flow, r.raw, r.ratio) else { panic!("{r:?}") };
        assert!(lava_flow > 0.0 && raw > 0.0 && ratio.is_finite(), "{r:?}");
    }
}
