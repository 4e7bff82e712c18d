//! The `lava_flow` Python package's native module (`lava_flow._native`): a thin layer over the
//! lava-flow library. Python users read `docs/PYTHON.md` and the type stubs
//! (`python/lava_flow/__init__.pyi`); this crate is built by maturin (`pyproject.toml`).
//!
//! Ownership across the language boundary: every Python object owns what it wraps behind a
//! mutex (`close()` takes it out, collection drops it), and every DLPack capsule, typed view and
//! array interface keeps an `Arc` of the mapping or import it points into, so no order of
//! `close()` and garbage collection leaves a consumer with unmapped memory, and every fd is
//! closed once, by the Rust value that owns it.

mod bench;
mod channel;
mod cuda;
mod devices;
mod dlpack;
mod errors;
mod host;
mod objects;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(objects::connect, m)?)?;
    m.add_function(wrap_pyfunction!(bench::_bench_rust, m)?)?;
    m.add_class::<objects::Client>()?;
    m.add_class::<objects::Server>()?;
    m.add_class::<objects::SharedObject>()?;
    m.add_class::<host::HostMapping>()?;
    m.add_class::<host::HostMemory>()?;
    m.add_class::<host::Allocator>()?;
    m.add_class::<host::Allocation>()?;
    m.add_class::<dlpack::Tensor>()?;
    m.add_class::<cuda::CudaMemory>()?;
    m.add_class::<cuda::CudaSemaphore>()?;
    m.add_class::<channel::Channel>()?;
    m.add_class::<channel::Producer>()?;
    m.add_class::<channel::WriteFrame>()?;
    m.add_class::<channel::Consumer>()?;
    m.add_class::<channel::ReadFrame>()?;
    m.add_class::<channel::Metadata>()?;
    m.add("KDL_CPU", dlpack::KDL_CPU)?;
    m.add("KDL_CUDA", dlpack::KDL_CUDA)?;
    Ok(())
}
