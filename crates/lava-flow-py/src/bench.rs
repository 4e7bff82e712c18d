//! The Rust half of `python -m lava_flow.bench`: the same get + map/import steps the Python
//! half times, through the Rust library alone, in the same process and against the same server.

use std::time::Instant;

use lava_flow::ipc;
use pyo3::prelude::*;

use crate::errors::IntoPy;

/// Seconds of each of `iterations` rounds of `get(name)` and then a host mapping (`cuda`
/// false) or a CUDA import into the device the description names (`cuda` true), each dropped
/// after its round is timed.
#[pyfunction]
#[pyo3(signature = (path, name, iterations, cuda=false))]
pub fn _bench_rust(
    py: Python<'_>,
    path: std::path::PathBuf,
    name: String,
    iterations: u32,
    cuda: bool,
) -> PyResult<Vec<f64>> {
    py.detach(|| -> lava_flow::Result<Vec<f64>> {
        let client = ipc::Client::connect(&path)?;
        let identity = crate::objects::identity(&client.get_one(&name)?.description());
        let device = if cuda { Some(crate::devices::cuda_for_identity(&identity)?) } else { None };
        let mut seconds = Vec::with_capacity(iterations as usize);
        for _ in 0..iterations {
            let started = Instant::now();
            let object = client.get_one(&name)?;
            let kept: Box<dyn std::any::Any> = match &device {
                Some(d) => Box::new(crate::cuda::import_rust(d, object)?),
                None => Box::new(crate::host::map_region(&object)?.2),
            };
            seconds.push(started.elapsed().as_secs_f64());
            drop(kept);
        }
        Ok(seconds)
    })
    .py_err()
}
