//! Labelled image folders: the chapter's `train/<category>/`, `val/<category>/` layout, or one
//! folder of category sub-folders split 90/10 per category with a fixed seed; and the
//! Fashion-MNIST export that turns the Debian package's IDX files into such folders.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Image file extensions read as images; anything else in a category folder is skipped.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "gif", "bmp"];

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub path: PathBuf,
    pub class: usize,
}

#[derive(Debug, Clone)]
pub struct Split {
    pub classes: Vec<String>,
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    /// Files found in category folders that are not images by their extension.
    pub not_images: Vec<PathBuf>,
}

/// Reads `dir`: `train/` and `val/` when both exist, else its category sub-folders, split 90/10
/// per category (at least one validation image per category with two or more images).
pub fn split(dir: &Path, seed: u64) -> anyhow::Result<Split> {
    let (train_dir, val_dir) = (dir.join("train"), dir.join("val"));
    if train_dir.is_dir() && val_dir.is_dir() {
        let (classes, train, mut not_images) = labelled(&train_dir, None)?;
        let (_, val, more) = labelled(&val_dir, Some(&classes))?;
        not_images.extend(more);
        return Ok(Split { classes, train, val, not_images });
    }
    let (classes, all, not_images) = labelled(dir, None)?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in 0..classes.len() {
        let mut members: Vec<Example> = all.iter().filter(|e| e.class == class).cloned().collect();
        shuffle(&mut members, seed ^ class as u64);
        let held_out = if members.len() >= 2 { (members.len() / 10).max(1) } else { 0 };
        val.extend(members.drain(..held_out));
        train.extend(members);
    }
    Ok(Split { classes, train, val, not_images })
}

/// Every image under `dir/<category>/`, categories sorted by name (or in `known` order).
pub fn labelled(dir: &Path, known: Option<&[String]>) -> anyhow::Result<(Vec<String>, Vec<Example>, Vec<PathBuf>)> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}: expected one sub-folder per category", dir.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    classes.sort();
    if let Some(known) = known {
        if let Some(extra) = classes.iter().find(|c| !known.contains(c)) {
            anyhow::bail!("{} has a category `{extra}` that the training folder lacks", dir.display());
        }
        classes = known.to_vec();
    }
    anyhow::ensure!(!classes.is_empty(), "{} has no category sub-folders", dir.display());
    let (mut examples, mut not_images) = (Vec::new(), Vec::new());
    for (class, name) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(name)).map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect()).unwrap_or_default();
        files.sort();
        for path in files {
            let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            if IMAGE_EXTENSIONS.contains(&extension.as_str()) {
                examples.push(Example { path, class });
            } else {
                not_images.push(path);
            }
        }
    }
    Ok((classes, examples, not_images))
}

/// Fisher-Yates with splitmix64: the same seed gives the same order on every machine.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The "skipped N unreadable images" paragraph of the train and eval reports.
pub fn render_skipped(out: &mut String, skipped: &[(PathBuf, String)]) {
    if !skipped.is_empty() {
        out.push_str(&format!("skipped {} unreadable images:\n", skipped.len()));
        for (path, reason) in skipped {
            out.push_str(&format!("  {}: {reason}\n", path.display()));
        }
    }
}

/// Fashion-MNIST's categories, in label order, as catalogue folder names.
pub const FASHION_MNIST_CLASSES: [&str; 10] = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"];

pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// How many images per category go where.
#[derive(Debug, Clone, Copy)]
pub struct FashionMnistExport {
    pub train_per_class: usize,
    pub val_per_class: usize,
    pub test_per_class: usize,
}

/// Writes `out/train/<category>/*.png` and `out/val/...` from the training set (disjoint
/// images) and `out/test/...` from the separate test set, the first images of each category.
/// Returns the number of images written; existing files are kept.
pub fn export_fashion_mnist(out: &Path, sizes: FashionMnistExport) -> anyhow::Result<usize> {
    let dataset = FashionMnist::load()?;
    let all = &FASHION_MNIST_CLASSES[..];
    Ok(dataset.export(&out.join("train"), FashionMnistSet::Train, 0, sizes.train_per_class, all)?
        + dataset.export(&out.join("val"), FashionMnistSet::Train, sizes.train_per_class, sizes.val_per_class, all)?
        + dataset.export(&out.join("test"), FashionMnistSet::Test, 0, sizes.test_per_class, all)?)
}

/// Fashion-MNIST's 60,000 training and 10,000 test images (28 x 28 grey) with their labels.
pub struct FashionMnist {
    train: (Vec<u8>, Vec<u8>),
    test: (Vec<u8>, Vec<u8>),
}

/// One of Fashion-MNIST's two files of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FashionMnistSet {
    Train,
    Test,
}

impl FashionMnist {
    /// Reads Debian's copy (`make setup` installs it).
    pub fn load() -> anyhow::Result<FashionMnist> {
        let source = Path::new(FASHION_MNIST_DIR);
        let read = |images: &str, labels: &str| -> anyhow::Result<(Vec<u8>, Vec<u8>)> { Ok((read_idx(&source.join(images))?, read_idx(&source.join(labels))?)) };
        Ok(FashionMnist { train: read("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")?, test: read("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")? })
    }

    /// Writes `folder/<category>/<index>.png` for the images `skip..skip + count` of each of
    /// `classes` in `set` (file order); returns how many were written (existing files are kept).
    pub fn export(&self, folder: &Path, set: FashionMnistSet, skip: usize, count: usize, classes: &[&str]) -> anyhow::Result<usize> {
        let (images, labels) = match set {
            FashionMnistSet::Train => &self.train,
            FashionMnistSet::Test => &self.test,
        };
        let mut written = 0;
        for (class, name) in FASHION_MNIST_CLASSES.iter().enumerate().filter(|(_, name)| classes.contains(name)) {
            let folder = folder.join(name);
            std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
            let indices = labels.iter().enumerate().filter(|(_, l)| **l as usize == class).map(|(i, _)| i).skip(skip).take(count);
            for index in indices {
                let path = folder.join(format!("{index:05}.png"));
                if !path.exists() {
                    let pixels = images[index * 784..(index + 1) * 784].to_vec();
                    image::GrayImage::from_raw(28, 28, pixels).expect("784 bytes").save(&path).with_context(|| format!("cannot write {}", path.display()))?;
                    written += 1;
                }
            }
        }
        Ok(written)
    }
}

/// The payload of a gzipped IDX file (images or labels), after its header.
fn read_idx(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}: `make setup` installs Debian's dataset-fashion-mnist", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file).read_to_end(&mut bytes).with_context(|| format!("{} is not valid gzip", path.display()))?;
    anyhow::ensure!(bytes.len() >= 8 && bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 8, "{} is not an IDX file of bytes", path.display());
    let dimensions = bytes[3] as usize;
    Ok(bytes.split_off(4 + 4 * dimensions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_with(counts: &[(&str, usize)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (class, count) in counts {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            for i in 0..*count {
                std::fs::write(dir.path().join(class).join(format!("{i}.png")), b"x").unwrap();
            }
        }
        dir
    }

    #[test]
    fn a_tiff_is_not_taken_for_an_image_nobody_can_decode() {
        // The CLI, the catalogue scan and the bot all read this one list; `image` is built
        // without TIFF, so a .tif would only have failed later, at decoding.
        let dir = folder_with(&[("bag", 1)]);
        std::fs::write(dir.path().join("bag/scan.tif"), b"II*\0").unwrap();
        let (_, examples, not_images) = labelled(dir.path(), None).unwrap();
        assert_eq!(examples.len(), 1);
        assert_eq!(not_images, [dir.path().join("bag/scan.tif")]);
    }

    #[test]
    fn one_folder_is_split_90_10_per_category_reproducibly() {
        let dir = folder_with(&[("bag", 20), ("coat", 10), ("dress", 1)]);
        std::fs::write(dir.path().join("bag/notes.txt"), b"not an image").unwrap();
        let first = split(dir.path(), 7).unwrap();
        assert_eq!(first.classes, ["bag", "coat", "dress"]);
        let count = |set: &[Example], class: usize| set.iter().filter(|e| e.class == class).count();
        assert_eq!((count(&first.val, 0), count(&first.val, 1), count(&first.val, 2)), (2, 1, 0));
        assert_eq!(first.train.len() + first.val.len(), 31);
        assert_eq!(first.not_images.len(), 1);
        let again = split(dir.path(), 7).unwrap();
        assert_eq!(first.val, again.val, "same seed, same split");
        assert_ne!(split(dir.path(), 8).unwrap().val, first.val, "another seed, another split");
    }

    #[test]
    fn the_chapter_layout_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        for (part, n) in [("train", 3), ("val", 2)] {
            for class in ["bag", "coat"] {
                std::fs::create_dir_all(dir.path().join(part).join(class)).unwrap();
                for i in 0..n {
                    std::fs::write(dir.path().join(part).join(class).join(format!("{i}.jpg")), b"x").unwrap();
                }
            }
        }
        let split = split(dir.path(), 0).unwrap();
        assert_eq!((split.train.len(), split.val.len()), (6, 4));
    }
}
