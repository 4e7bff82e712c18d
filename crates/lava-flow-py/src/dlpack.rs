//! DLPack capsules and typed views (`Tensor`) over host mappings and CUDA imports.
//!
//! Ownership: every capsule and every `Tensor` holds an `Arc` of what keeps the bytes mapped (a
//! host mapping, a Vulkan allocation, a CUDA import). The capsule's deleter drops that `Arc`, so
//! the bytes stay mapped for exactly as long as a consumer (NumPy, PyTorch, CuPy) may use them,
//! whatever the order in which Python objects are collected.

use std::any::Any;
use std::ffi::{c_void, CStr};
use std::sync::Arc;

use pyo3::exceptions::{PyAttributeError, PyBufferError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::invalid;

/// `kDLCPU`.
pub const KDL_CPU: i32 = 1;
/// `kDLCUDA`.
pub const KDL_CUDA: i32 = 2;

/// What keeps a mapping's bytes alive: any value, dropped when the last view or capsule goes.
pub type Keep = Arc<dyn Any + Send + Sync>;

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

/// One exported versioned capsule's memory, laid out as [`Exported`] is.
#[repr(C)]
struct ExportedVersioned {
    managed: DLManagedTensorVersioned,
    shape: Vec<i64>,
    strides: Vec<i64>,
    _keep: Keep,
}

const DLTENSOR_VERSIONED: &CStr = c"dltensor_versioned";

/// The deleter of versioned capsules (see [`deleter`]).
unsafe extern "C" fn deleter_versioned(managed: *mut DLManagedTensorVersioned) {
    if managed.is_null() {
        return;
    }
    // SAFETY: as in `deleter`, for the `ExportedVersioned` boxes `capsule` makes.
    drop(unsafe { Box::from_raw(managed.cast::<ExportedVersioned>()) });
}

/// The destructor of versioned capsules (see [`capsule_destructor`]).
unsafe extern "C" fn capsule_destructor_versioned(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: as in `capsule_destructor`, with the versioned name.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, DLTENSOR_VERSIONED.as_ptr()) == 1 {
            let managed = pyo3::ffi::PyCapsule_GetPointer(capsule, DLTENSOR_VERSIONED.as_ptr())
                .cast::<DLManagedTensorVersioned>();
            if let Some(d) = (*managed).deleter {
                d(managed);
            }
        }
    }
}

/// One exported capsule's memory: the managed tensor first (`repr(C)`, so a pointer to this is a
/// pointer to it), the shape and strides it points into, and the owner it keeps alive.
#[repr(C)]
struct Exported {
    managed: DLManagedTensor,
    shape: Vec<i64>,
    strides: Vec<i64>,
    _keep: Keep,
}

const DLTENSOR: &CStr = c"dltensor";

/// The deleter a consumer calls when done (any thread, with or without the GIL): frees the
/// `Exported` and drops its `Arc`, which needs no Python.
unsafe extern "C" fn deleter(managed: *mut DLManagedTensor) {
    if managed.is_null() {
        return;
    }
    // SAFETY: `managed` is the pointer `capsule` made from `Box::into_raw` of an `Exported`, whose
    // first field it is (repr(C)); DLPack has the consumer call the deleter once, and the capsule
    // destructor calls it only when no consumer took the tensor (the name is still "dltensor"),
    // so the box is freed exactly once.
    drop(unsafe { Box::from_raw(managed.cast::<Exported>()) });
}

/// The capsule destructor: frees a capsule that no consumer took (its name is still "dltensor";
/// a consumer renames it "used_dltensor" and then owns the tensor).
unsafe extern "C" fn capsule_destructor(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: called by Python with the GIL held on a live capsule; PyCapsule_IsValid checks the
    // name without raising, so GetPointer below cannot fail.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
            let managed = pyo3::ffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr()).cast::<DLManagedTensor>();
            if let Some(d) = (*managed).deleter {
                d(managed);
            }
        }
    }
}

/// Element types: DLPack code and bits, the array-interface type string, the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DType {
    code: u8,
    bits: u8,
    name: &'static str,
    typestr: Option<&'static str>,
}

const DTYPES: [DType; 15] = [
    DType { code: 6, bits: 8, name: "bool", typestr: Some("|b1") },
    DType { code: 0, bits: 8, name: "int8", typestr: Some("|i1") },
    DType { code: 1, bits: 8, name: "uint8", typestr: Some("|u1") },
    DType { code: 0, bits: 16, name: "int16", typestr: Some("<i2") },
    DType { code: 1, bits: 16, name: "uint16", typestr: Some("<u2") },
    DType { code: 0, bits: 32, name: "int32", typestr: Some("<i4") },
    DType { code: 1, bits: 32, name: "uint32", typestr: Some("<u4") },
    DType { code: 0, bits: 64, name: "int64", typestr: Some("<i8") },
    DType { code: 1, bits: 64, name: "uint64", typestr: Some("<u8") },
    DType { code: 2, bits: 16, name: "float16", typestr: Some("<f2") },
    DType { code: 4, bits: 16, name: "bfloat16", typestr: None },
    DType { code: 2, bits: 32, name: "float32", typestr: Some("<f4") },
    DType { code: 2, bits: 64, name: "float64", typestr: Some("<f8") },
    DType { code: 5, bits: 64, name: "complex64", typestr: Some("<c8") },
    DType { code: 5, bits: 128, name: "complex128", typestr: Some("<c16") },
];

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        u64::from(self.bits / 8)
    }

    /// `uint8`.
    pub fn u8() -> DType {
        DTYPES[2]
    }

    /// The type of DLPack `code` and `bits` (one lane), if lava-flow knows it.
    pub fn from_dl(code: u8, bits: u8) -> Option<DType> {
        DTYPES.iter().copied().find(|d| d.code == code && d.bits == bits)
    }

    /// The DLPack type code.
    pub fn code(self) -> u8 {
        self.code
    }

    /// Bits per element.
    pub fn bits(self) -> u8 {
        self.bits
    }

    /// The name (`"float32"`).
    pub fn name(self) -> &'static str {
        self.name
    }

    /// From a name (`"float32"`, `"<f4"`, `"f4"`), a NumPy dtype or scalar type, or a torch dtype.
    pub fn parse(dtype: &Bound<'_, PyAny>) -> PyResult<DType> {
        let text: String = if let Ok(s) = dtype.extract::<String>() {
            s
        } else if dtype.is_instance_of::<pyo3::types::PyType>() {
            dtype.getattr("__name__")?.extract()?
        } else {
            dtype.str()?.extract()?
        };
        let name = text.trim().trim_start_matches("torch.").trim_start_matches(['<', '|', '=']);
        let alias = match name {
            "b1" | "?" => "bool",
            "i1" => "int8",
            "u1" | "B" => "uint8",
            "i2" => "int16",
            "u2" => "uint16",
            "i4" => "int32",
            "u4" => "uint32",
            "i8" => "int64",
            "u8" => "uint64",
            "f2" | "half" => "float16",
            "f4" => "float32",
            // Python's own `float` and `int`, as NumPy reads them.
            "f8" | "double" | "float" => "float64",
            "int" => "int64",
            "c8" => "complex64",
            "c16" => "complex128",
            other => other,
        };
        DTYPES.iter().copied().find(|d| d.name == alias).ok_or_else(|| {
            invalid(
                format!("dtype {text:?}"),
                "lava-flow knows bool, int8..int64, uint8..uint64, float16, bfloat16, float32, float64, complex64 \
                 and complex128 (little-endian)",
                "pass one of those names, a NumPy dtype or a torch dtype",
            )
        })
    }
}

/// A typed, strided view of bytes on one device, checked to lie inside them.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dtype: DType,
    pub shape: Vec<i64>,
    /// In elements, as DLPack and torch count them (NumPy counts bytes).
    pub strides: Vec<i64>,
    /// Bytes from the start of the mapping.
    pub offset: u64,
}

impl Layout {
    /// All the bytes as one `uint8` vector.
    pub fn bytes(len: u64) -> Layout {
        Layout { dtype: DType::u8(), shape: vec![len as i64], strides: vec![1], offset: 0 }
    }

    /// Checks that a view of `dtype`, `shape`, `strides` (elements, default row-major) at byte
    /// `offset` lies inside `len` bytes: every element it can reach, none past the end.
    pub fn new(dtype: DType, shape: Vec<i64>, strides: Option<Vec<i64>>, offset: u64, len: u64) -> PyResult<Layout> {
        let what = || format!("view of dtype {} and shape {shape:?} at byte offset {offset}", dtype.name);
        if shape.len() > 32 {
            return Err(invalid(what(), "more than 32 dimensions", "reshape to fewer dimensions"));
        }
        if let Some(d) = shape.iter().find(|&&d| d < 0) {
            return Err(invalid(what(), format!("dimension {d} is negative"), "give sizes of 0 or more"));
        }
        let strides = match strides {
            Some(s) => {
                if s.len() != shape.len() {
                    return Err(invalid(
                        what(),
                        format!("{} strides for {} dimensions", s.len(), shape.len()),
                        "give one stride (in elements) per dimension, or none for row-major",
                    ));
                }
                if let Some(st) = s.iter().find(|&&st| st < 0) {
                    return Err(invalid(what(), format!("stride {st} is negative"), "give strides of 0 or more"));
                }
                s
            }
            None => {
                let mut s = vec![0i64; shape.len()];
                let mut step: i64 = 1;
                for i in (0..shape.len()).rev() {
                    s[i] = step;
                    step = step.saturating_mul(shape[i].max(1));
                }
                s
            }
        };
        let size = dtype.size();
        if offset % size != 0 {
            return Err(invalid(
                what(),
                format!("the offset is not a multiple of the element size, {size} bytes"),
                "align the offset to the element size",
            ));
        }
        // The last byte the view can reach: offset + size * (1 + sum((shape_i - 1) * stride_i)),
        // in u128 so that no shape or stride a caller passes overflows.
        let end: u128 = if shape.contains(&0) {
            u128::from(offset)
        } else {
            shape
                .iter()
                .zip(&strides)
                .try_fold(1u128, |acc, (&d, &s)| acc.checked_add((d as u128 - 1).checked_mul(s as u128)?))
                .and_then(|reach| reach.checked_mul(u128::from(size)))
                .and_then(|bytes| bytes.checked_add(u128::from(offset)))
                .unwrap_or(u128::MAX)
        };
        if end > u128::from(len) {
            return Err(invalid(
                what(),
                format!("it reaches byte {end} and the memory holds {len} bytes"),
                "pass a dtype and shape that fit the object's size (its `size` attribute)",
            ));
        }
        Ok(Layout { dtype, shape, strides, offset })
    }

    /// Whether the strides are row-major for the shape (for array interfaces, which then pass none).
    fn contiguous(&self) -> bool {
        let mut step = 1i64;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] != 1 && self.strides[i] != step {
                return false;
            }
            step = step.saturating_mul(self.shape[i]);
        }
        true
    }
}

/// Mapped bytes on one device and what keeps them mapped.
#[derive(Clone)]
pub struct Region {
    /// Host address or CUDA device pointer of the first byte.
    pub ptr: u64,
    pub len: u64,
    /// `(kDLCPU, 0)` or `(kDLCUDA, ordinal)`.
    pub device: (i32, i32),
    pub keep: Keep,
    /// Whether consumers may write: false exports DLPack's read-only flag (versioned capsules)
    /// and a read-only array interface.
    pub writable: bool,
}

/// `DLPACK_FLAG_BITMASK_READ_ONLY`.
const DLPACK_FLAG_READ_ONLY: u64 = 1;

fn dl_tensor(region: &Region, layout: &Layout) -> DLTensor {
    DLTensor {
        data: (region.ptr + layout.offset) as usize as *mut c_void,
        device: DLDevice { device_type: region.device.0, device_id: region.device.1 },
        ndim: layout.shape.len() as i32,
        dtype: DLDataType { code: layout.dtype.code, bits: layout.dtype.bits, lanes: 1 },
        shape: std::ptr::null_mut(),
        strides: std::ptr::null_mut(),
        byte_offset: 0,
    }
}

/// Builds a DLPack capsule of `layout` over `region`: a versioned one ("dltensor_versioned",
/// DLPack 1.0, writable) when the consumer accepts `max_version` 1 or later, else the legacy
/// "dltensor" (which NumPy imports read-only).
pub fn capsule<'py>(
    py: Python<'py>,
    region: &Region,
    layout: &Layout,
    max_version: Option<(u32, u32)>,
) -> PyResult<Bound<'py, PyAny>> {
    let (raw, name, destructor): (*mut c_void, &CStr, pyo3::ffi::PyCapsule_Destructor) =
        if max_version.is_some_and(|(major, _)| major >= 1) {
            let mut exported = Box::new(ExportedVersioned {
                managed: DLManagedTensorVersioned {
                    version: DLPackVersion { major: 1, minor: 0 },
                    manager_ctx: std::ptr::null_mut(),
                    deleter: Some(deleter_versioned),
                    flags: if region.writable { 0 } else { DLPACK_FLAG_READ_ONLY },
                    dl_tensor: dl_tensor(region, layout),
                },
                shape: layout.shape.clone(),
                strides: layout.strides.clone(),
                _keep: region.keep.clone(),
            });
            // The vectors' heap buffers do not move when the box does.
            exported.managed.dl_tensor.shape = exported.shape.as_mut_ptr();
            exported.managed.dl_tensor.strides = exported.strides.as_mut_ptr();
            let raw = Box::into_raw(exported);
            // SAFETY: `raw` is a live, uniquely owned box.
            unsafe { (*raw).managed.manager_ctx = raw.cast() };
            (raw.cast(), DLTENSOR_VERSIONED, capsule_destructor_versioned)
        } else {
            let mut exported = Box::new(Exported {
                managed: DLManagedTensor {
                    dl_tensor: dl_tensor(region, layout),
                    manager_ctx: std::ptr::null_mut(),
                    deleter: Some(deleter),
                },
                shape: layout.shape.clone(),
                strides: layout.strides.clone(),
                _keep: region.keep.clone(),
            });
            exported.managed.dl_tensor.shape = exported.shape.as_mut_ptr();
            exported.managed.dl_tensor.strides = exported.strides.as_mut_ptr();
            let raw = Box::into_raw(exported);
            // SAFETY: `raw` is a live, uniquely owned box.
            unsafe { (*raw).managed.manager_ctx = raw.cast() };
            (raw.cast(), DLTENSOR, capsule_destructor)
        };
    // SAFETY: `raw` points to a live box whose first field is the managed tensor the name
    // announces; the capsule takes ownership of it (freed by the consumer's deleter call or by
    // the destructor), and the name is a 'static C string as PyCapsule_New requires.
    let cap = unsafe { pyo3::ffi::PyCapsule_New(raw, name.as_ptr(), Some(destructor)) };
    if cap.is_null() {
        // SAFETY: the capsule was not made, so the box is still ours alone; the deleter matching
        // its kind frees it.
        unsafe {
            if name == DLTENSOR_VERSIONED {
                deleter_versioned(raw.cast());
            } else {
                deleter(raw.cast());
            }
        }
        return Err(PyErr::fetch(py));
    }
    // SAFETY: PyCapsule_New returned a new (owned) reference.
    Ok(unsafe { Bound::from_owned_ptr(py, cap) })
}

/// The checks `__dlpack__(stream, max_version, dl_device, copy)` makes on its keyword arguments
/// besides the stream: another device and copies are refused.
pub fn check_dlpack_args(device: (i32, i32), dl_device: Option<(i32, i32)>, copy: Option<bool>) -> PyResult<()> {
    if let Some(asked) = dl_device {
        if asked != device {
            return Err(PyBufferError::new_err(format!(
                "__dlpack__(dl_device={asked:?}) asks for another device than the memory's {device:?}; lava-flow \
                 does not copy between devices: import the object there instead"
            )));
        }
    }
    if copy == Some(true) {
        return Err(PyBufferError::new_err(
            "__dlpack__(copy=True): lava-flow shares memory without copying; copy the consumer's array instead",
        ));
    }
    Ok(())
}

/// `__dlpack__` of `layout` over `region`: checks the arguments, makes a CUDA consumer's stream
/// wait for the ready value where there is one, and returns the capsule. The arguments are the
/// protocol's four keywords and what they apply to.
#[allow(clippy::too_many_arguments)]
pub fn export<'py>(
    py: Python<'py>,
    region: &Region,
    layout: &Layout,
    ready: Option<&crate::cuda::Ready>,
    stream: Option<&Bound<'py, PyAny>>,
    max_version: Option<(u32, u32)>,
    dl_device: Option<(i32, i32)>,
    copy: Option<bool>,
) -> PyResult<Bound<'py, PyAny>> {
    check_dlpack_args(region.device, dl_device, copy)?;
    if region.device.0 == KDL_CPU {
        if let Some(s) = stream {
            if !s.is_none() && s.extract::<i64>().ok() != Some(-1) {
                return Err(PyBufferError::new_err(
                    "__dlpack__(stream=...) on host memory: a stream is for CUDA memory; pass None",
                ));
            }
        }
    } else if let Some(ready) = ready {
        ready.wait_for_dlpack(stream)?;
    }
    capsule(py, region, layout, max_version)
}

/// The array-interface dictionary (`__array_interface__` v3, `__cuda_array_interface__` v3).
pub fn array_interface<'py>(py: Python<'py>, region: &Region, layout: &Layout) -> PyResult<Bound<'py, PyDict>> {
    let typestr = layout.dtype.typestr.ok_or_else(|| {
        PyAttributeError::new_err(format!(
            "{} has no array-interface type string; use DLPack (__dlpack__) for it",
            layout.dtype.name
        ))
    })?;
    let d = PyDict::new(py);
    d.set_item("shape", PyTuple::new(py, &layout.shape)?)?;
    d.set_item("typestr", typestr)?;
    d.set_item("data", ((region.ptr + layout.offset), !region.writable))?;
    d.set_item("version", 3)?;
    if layout.contiguous() {
        d.set_item("strides", py.None())?;
    } else {
        let bytes: Vec<i64> = layout.strides.iter().map(|s| s * layout.dtype.size() as i64).collect();
        d.set_item("strides", PyTuple::new(py, bytes)?)?;
    }
    if region.device.0 == KDL_CUDA {
        // No stream: the bytes are ready when the producer says so (its semaphore), not on a stream.
        d.set_item("stream", py.None())?;
    }
    Ok(d)
}

/// A typed view of shared bytes, from `map_host().view(...)` or `import_cuda().view(...)`: hand it
/// to `numpy.from_dlpack`, `torch.from_dlpack`, `cupy.from_dlpack`, `numpy.asarray` (host) or
/// `cupy.asarray` (CUDA). It keeps the bytes mapped while it or anything made from it lives.
#[pyclass(module = "lava_flow", frozen)]
pub struct Tensor {
    pub region: Region,
    pub layout: Layout,
    /// A CUDA import's "ready" wait, enqueued on the consumer's stream by `__dlpack__`.
    pub ready: Option<crate::cuda::Ready>,
}

#[pymethods]
impl Tensor {
    /// DLPack export (a "dltensor" capsule). `stream` (CUDA only): the consumer's stream, which is
    /// made to wait for the producer's ready value when the import has one.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        export(py, &self.region, &self.layout, self.ready.as_ref(), stream, max_version, dl_device, copy)
    }

    /// `(kDLCPU, 0)` for host memory, `(kDLCUDA, ordinal)` for CUDA.
    fn __dlpack_device__(&self) -> (i32, i32) {
        self.region.device
    }

    /// NumPy's array interface (host views only).
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if self.region.device.0 != KDL_CPU {
            return Err(PyAttributeError::new_err("__array_interface__: this view is CUDA memory"));
        }
        array_interface(py, &self.region, &self.layout)
    }

    /// The CUDA array interface v3 (CUDA views only).
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if self.region.device.0 != KDL_CUDA {
            return Err(PyAttributeError::new_err("__cuda_array_interface__: this view is host memory"));
        }
        array_interface(py, &self.region, &self.layout)
    }

    /// The element type's name (`"float32"`).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.layout.dtype.name
    }

    /// The shape.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.layout.shape)
    }

    /// The strides, in elements.
    #[getter]
    fn strides<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.layout.strides)
    }

    /// The address of the first element (host address or CUDA device pointer).
    #[getter]
    fn ptr(&self) -> u64 {
        self.region.ptr + self.layout.offset
    }

    /// `(device_type, device_id)` as DLPack numbers it.
    #[getter]
    fn device(&self) -> (i32, i32) {
        self.region.device
    }

    fn __repr__(&self) -> String {
        format!(
            "lava_flow.Tensor(dtype={}, shape={:?}, strides={:?}, device={:?})",
            self.layout.dtype.name, self.layout.shape, self.layout.strides, self.region.device
        )
    }
}

/// `view(dtype, shape, strides=None, offset=0)` for mappings and imports.
pub fn view(
    region: Region,
    ready: Option<crate::cuda::Ready>,
    dtype: &Bound<'_, PyAny>,
    shape: &Bound<'_, PyAny>,
    strides: Option<&Bound<'_, PyAny>>,
    offset: u64,
) -> PyResult<Tensor> {
    let dtype = DType::parse(dtype)?;
    let shape: Vec<i64> = if let Ok(n) = shape.extract::<i64>() {
        vec![n]
    } else {
        shape.extract().map_err(|_| PyTypeError::new_err("shape: an int or a sequence of ints"))?
    };
    let strides: Option<Vec<i64>> = match strides {
        Some(s) if !s.is_none() => {
            Some(s.extract().map_err(|_| PyTypeError::new_err("strides: a sequence of ints (in elements), or None"))?)
        }
        _ => None,
    };
    let layout = Layout::new(dtype, shape, strides, offset, region.len)?;
    Ok(Tensor { region, layout, ready })
}
