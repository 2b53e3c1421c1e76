//! The integration tests that can share a process, in one binary: libtorch is linked (slowly)
//! once for all of them. One module per area; `cargo test --test it index::` runs one.
//!
//! Tests here run in parallel threads. Those that run libtorch models or time what they do take
//! [`common::heavy`] first, so that they run one at a time, as each did in its own binary
//! (2 cores). Two files stay binaries of their own: `tests/memory.rs` measures the process's
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
