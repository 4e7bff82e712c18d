//! lava-flow measured against the raw API calls doing the same work, in the same run: one module
//! per importer (and the pools), each producing [`Row`]s that `lava-flow bench` prints and
//! plots, and that the criterion benches of lava-flow reuse as fixtures.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "gl")]
pub mod gl;
#[cfg(feature = "opencl")]
pub mod opencl;
pub mod pool;
#[cfg(feature = "mpi")]
pub mod remote;

/// Whether a bigger figure is better (bandwidth) or a smaller one (latency).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Better {
    /// Latency: smaller is better.
    Lower,
    /// Bandwidth: bigger is better.
    Higher,
}

/// One measured case: what `lava-flow bench` prints, writes as JSON (and reads back) and plots.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Row {
    /// "vulkan", "cuda", "pool", "gl", "opencl".
    pub group: String,
    /// What was measured.
    pub case: String,
    /// lava-flow's figure (median); absent when the case could not be measured.
    pub lava_flow: Option<f64>,
    /// The raw API's figure for the same work, where there is one.
    pub raw: Option<f64>,
    /// Unit of both figures ("us", "GB/s").
    pub unit: String,
    /// lava_flow / raw.
    pub ratio: Option<f64>,
    /// Whether a bigger figure is better.
    pub better: Better,
    /// Iterations behind each median (0 where the source does not say).
    pub iterations: u32,
    /// Why the case could not be measured (the figures are then absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How to read the row, where the case name alone does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    /// A measured row; the ratio is worked out where there is a raw figure above zero, and a unit
    /// ending in `/s` is a bandwidth.
    pub fn new(
        group: &'static str,
        case: impl Into<String>,
        lava_flow: f64,
        raw: Option<f64>,
        unit: &'static str,
    ) -> Row {
        Row {
            group: group.into(),
            case: case.into(),
            lava_flow: Some(lava_flow),
            raw,
            unit: unit.into(),
            ratio: raw.filter(|r| *r > 0.0).map(|r| lava_flow / r),
            better: if unit.ends_with("/s") { Better::Higher } else { Better::Lower },
            iterations: 0,
            error: None,
            note: None,
        }
    }

    /// A case that could not be measured, and why.
    pub fn not_measured(group: &'static str, case: impl Into<String>, unit: &'static str, error: String) -> Row {
        Row { lava_flow: None, error: Some(error), ..Row::new(group, case, 0.0, None, unit) }
    }

    /// Sets the iterations behind each figure.
    pub fn iterations(mut self, n: u32) -> Row {
        self.iterations = n;
        self
    }
}

/// The median of `values`: the middle one, or the mean of the two middle ones for an even count
/// (NaN for none). The one median of the benchmarks, the CLI's bench and its soak.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The median time of `f` over `iterations` runs after `warmup` runs; what `f` returns is dropped
/// outside the timed part, and so is what `setup` prepares.
pub fn median_time<I, O>(
    warmup: u32,
    iterations: u32,
    mut setup: impl FnMut() -> lava_flow::Result<I>,
    mut f: impl FnMut(I) -> lava_flow::Result<O>,
) -> lava_flow::Result<std::time::Duration> {
    let mut times = Vec::with_capacity(iterations as usize);
    for i in 0..warmup + iterations {
        let input = setup()?;
        let start = std::time::Instant::now();
        let out = f(input)?;
        let t = start.elapsed();
        drop(out);
        if i >= warmup {
            times.push(t.as_secs_f64());
        }
    }
    // NaN (no iterations) becomes 0.
    Ok(std::time::Duration::from_secs_f64(median(times).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
