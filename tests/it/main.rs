//! The integration tests that can share a process, in one binary: libtorch is linked (slowly)
//! once for all of them. One module per area; `cargo test --test it index::` runs one.
//!
//! Tests here run in parallel threads. Each that runs libtorch models or heavy commands, or
//! times what it does, takes its module's turn ([`common::heavy`]) for its whole run: the tests
//! of one module run beside each other, and one module at a time, as when each module was a
//! binary of its own (2 cores). Light `cli` tests run beside any. Two files stay binaries of their own: `tests/memory.rs` measures the process's
//! peak RSS, and `tests/ops.rs` checks exact moves of the process-wide Prometheus metrics.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod clip;
mod discord;
mod feed;
mod index;
mod intent;
mod postgres;
mod train;
mod vision;
