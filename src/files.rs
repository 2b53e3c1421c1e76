//! Files written whole or not at all, JSON-lines logs appended a whole line at a time, and
//! where trained heads live. A leaf: it knows nothing
//! of the modules that use it.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A temporary file beside `path` (so that the final rename stays on one file system), with
/// `path`'s extension: writers such as `VarStore::save` pick the format from it.
pub fn temporary_beside(path: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let extension = path.extension().map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    tempfile::Builder::new().prefix(".partial-").suffix(&extension).tempfile_in(parent).with_context(|| format!("cannot create a temporary file in {}", parent.display()))
}

/// Has `write` fill a temporary file beside `path`, flushes it to disk, then renames it over
/// `path`: a crash leaves the old file or the new one, never half of either, and no leftover.
pub fn replace_atomically(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let partial = temporary_beside(path)?;
    write(partial.path()).with_context(|| format!("cannot write {}", path.display()))?;
    persist(partial, path)
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    replace_atomically(path, |partial| Ok(std::fs::write(partial, bytes)?))
}

/// Flushes a finished temporary file and renames it into place.
pub fn persist(partial: tempfile::NamedTempFile, path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(partial.path())?.sync_all().with_context(|| format!("cannot flush {}", path.display()))?;
    partial.persist(path).with_context(|| format!("cannot move the new {} into place", path.display()))?;
    Ok(())
}

/// Appends `line` (one JSON value, no newline) to a JSON-lines log in one flushed write. A crash
/// leaves at most a torn last line, which [`read_json_lines`] skips; the next line starts on a
/// line of its own.
pub fn append_line(path: &Path, line: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut log = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let length = log.metadata()?.len();
    let mut last = [b'\n'];
    if length > 0 {
        std::os::unix::fs::FileExt::read_exact_at(&log, &mut last, length - 1)?;
    }
    let mut whole = if last[0] == b'\n' { Vec::new() } else { vec![b'\n'] };
    whole.extend_from_slice(line);
    whole.push(b'\n');
    log.write_all(&whole).with_context(|| format!("cannot write {}", path.display()))?;
    log.sync_data().with_context(|| format!("cannot flush {}", path.display()))?;
    Ok(())
}

/// Every readable line of a JSON-lines log, oldest first (none when the file does not exist),
/// and how many lines could not be read (a torn last line).
pub fn read_json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<(Vec<T>, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut unreadable = 0;
    let values = text.lines().filter(|l| !l.trim().is_empty()).filter_map(|line| serde_json::from_str(line).map_err(|_| unreadable += 1).ok()).collect();
    Ok((values, unreadable))
}

/// The heads folder (`lookalike train --out`): what was trained, and one file per backbone.
pub mod heads {
    use super::*;

    /// Classes, profile and backbones the heads were trained for.
    pub fn info_path(dir: &Path) -> PathBuf {
        dir.join("heads.json")
    }

    pub fn head_path(dir: &Path, backbone: &str) -> PathBuf {
        dir.join(format!("{backbone}.safetensors"))
    }

    /// A backbone's fine-tuned stages, when `train --fine-tune-stages` opened some.
    pub fn tuned_backbone_path(dir: &Path, backbone: &str) -> PathBuf {
        dir.join(format!("{backbone}.backbone.safetensors"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads.json");
        write_atomically(&path, b"old").unwrap();
        let failed = replace_atomically(&path, |partial| {
            std::fs::write(partial, b"half of the ne")?;
            anyhow::bail!("disk full")
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the partial file is gone");
        replace_atomically(&path, |partial| {
            assert_eq!(partial.extension().unwrap(), "json", "writers see the real extension");
            Ok(std::fs::write(partial, b"new")?)
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
