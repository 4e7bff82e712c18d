//! CUDA importer (feature `cuda`): not written yet.
