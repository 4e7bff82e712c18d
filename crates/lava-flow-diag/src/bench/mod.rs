//! lava-flow measured against the raw API calls doing the same work, in the same run: one module
//! per importer (and the pools), each producing [`BenchRow`]s that `lava-flow bench` prints and
//! plots, and that the criterion benches of lava-flow reuse as fixtures.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "gl")]
pub mod gl;
#[cfg(feature = "opencl")]
pub mod opencl;
pub mod pool;

/// One measured case.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BenchRow {
    /// What was measured.
    pub case: String,
    /// The figure through lava-flow (a median).
    pub lava_flow: f64,
    /// The figure of the raw API calls (or native memory) doing the same.
    pub raw: f64,
    /// Unit of both figures ("us", "GB/s").
    pub unit: &'static str,
    /// `lava_flow / raw`: for a latency below 1 is faster than raw, for a bandwidth above 1 is.
    pub ratio: f64,
    /// Iterations behind each figure.
    pub iterations: u32,
}

impl BenchRow {
    /// A row with its ratio worked out (NaN when the raw figure is zero).
    pub fn new(case: impl Into<String>, lava_flow: f64, raw: f64, unit: &'static str, iterations: usize) -> BenchRow {
        BenchRow {
            case: case.into(),
            lava_flow,
            raw,
            unit,
            ratio: if raw > 0.0 { lava_flow / raw } else { f64::NAN },
            iterations: iterations.max(1).min(u32::MAX as usize) as u32,
        }
    }
}

/// The median of `values` (0 for none). Used by the GL and OpenCL benchmarks only.
#[cfg(any(feature = "gl", feature = "opencl"))]
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
