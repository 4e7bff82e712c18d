//! Selftests.
