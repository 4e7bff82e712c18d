//! OpenCL importer (feature `opencl`): not written yet.
