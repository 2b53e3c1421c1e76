//! Gives every binary this package builds (the CLI, tests, benches) an rpath to libtorch, so
//! `lookalike` starts without `LD_LIBRARY_PATH`. libtorch finds its CUDA libraries from there.
//!
//! The lookup mirrors torch-sys: `LIBTORCH` when set, else the torch package of the python that
//! torch-sys itself asks (`python` inside a virtual environment, `python3` otherwise).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let lib_dir = match std::env::var_os("LIBTORCH") {
        Some(root) => PathBuf::from(root).join("lib"),
        None => match torch_dir_from_python() {
            Some(dir) => dir.join("lib"),
            None => {
                // torch-sys fails with its own, clearer message in this case.
                println!("cargo:warning=python could not import torch: run `make setup` first");
                return;
            }
        },
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
}

fn torch_dir_from_python() -> Option<PathBuf> {
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
    let output = Command::new(python).args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}
