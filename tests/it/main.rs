//! The integration tests that can share a process, in one binary: libtorch is linked (slowly)
//! once for all of them. One module per area; `cargo test --test it index::` runs one.
//!
//! Tests here run in parallel threads. Each takes its module's turn ([`common::heavy`]) for its
//! whole run, or in `cli` for each command it starts: the tests of one module run beside each
//! other, and one module at a time, as when each module was a binary of its own (2 cores;
//! libtorch models and timed child processes). Two files stay binaries of their own: `tests/memory.rs` measures the process's
//! peak RSS, and `tests/ops.rs` checks exact moves of the process-wide Prometheus metrics.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod discord;
mod index;
mod intent;
mod postgres;
mod train;
mod vision;
