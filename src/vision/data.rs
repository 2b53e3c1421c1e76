//! Labelled image folders: the chapter's `train/<category>/`, `val/<category>/` layout, or one
//! folder of category sub-folders split 90/10 per category with a fixed seed; and the
//! Fashion-MNIST export that turns the Debian package's IDX files into such folders.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::catalogue::{labelled, Example};

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
        crate::rng::Rng::new(seed ^ class as u64).shuffle(&mut members);
        let held_out = if members.len() >= 2 { (members.len() / 10).max(1) } else { 0 };
        val.extend(members.drain(..held_out));
        train.extend(members);
    }
    Ok(Split { classes, train, val, not_images })
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

    /// The 28 x 28 grey pixels of the `nth` image of category `class` in `set` (file order).
    pub fn pixels(&self, set: FashionMnistSet, class: &str, nth: usize) -> Option<&[u8]> {
        let (images, labels) = match set {
            FashionMnistSet::Train => &self.train,
            FashionMnistSet::Test => &self.test,
        };
        let label = FASHION_MNIST_CLASSES.iter().position(|c| *c == class)?;
        let index = labels.iter().enumerate().filter(|(_, l)| **l as usize == label).nth(nth)?.0;
        images.get(index * 784..(index + 1) * 784)
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
