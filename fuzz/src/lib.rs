//! The fuzz targets' checks, shared with the stable replay test (see `checks`).

pub mod checks;
