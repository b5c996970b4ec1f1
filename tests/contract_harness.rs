//! Runs `tests/contract.rs`, the unchanged copy of the shared contract.
//!
//! The contract must stay byte-for-byte identical to `../shared/contract/contract.rs`,
//! and its layout is not rustfmt's: it is compiled from here, as a module
//! rustfmt skips, so `cargo fmt` never rewrites it.

#[rustfmt::skip]
#[path = "contract.rs"]
mod contract;
