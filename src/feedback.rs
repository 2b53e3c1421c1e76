//! Corrections: the category a shopper or moderator picks under "Wrong category?", kept as a
//! labelled example the next training run can learn from. `feedback.dir` holds
//! `corrections.jsonl` (one line per pick: the query image's sha256, the categories searched,
//! the one picked, who, when, and whether they moderate) and `images/<sha256>.<ext>`, each photo
//! stored once. At most `feedback.max_corrections` lines are kept, oldest dropped first.
//!
//! Trust: a moderator's pick counts at once; a shopper's pick counts when at least
//! `feedback.min_agreeing_users` distinct users picked the same category for the same photo,
//! so one user cannot teach the heads alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::FeedbackConfig;
use crate::files;

/// One pick under "Wrong category?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    /// sha256 of the query photo's bytes, in hex; the photo is `images/<image>.<extension>`.
    pub image: String,
    pub extension: String,
    /// The categories the bot searched (what the vote and the text chose).
    pub searched: Vec<String>,
    /// The category the user picked instead.
    pub picked: String,
    /// The Discord user id (or 0 for the CLI).
    pub user: u64,
    pub moderator: bool,
    /// Seconds since the Unix epoch.
    pub unix_s: u64,
}

/// Why a photo's pick is (or is not yet) used for training.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// A moderator picked it.
    Moderator,
    /// This many distinct users picked it, at least `min_agreeing_users`.
    Agreed(usize),
    /// This many distinct users picked it, too few so far.
    Pending(usize),
}

impl Trust {
    pub fn trusted(&self) -> bool {
        !matches!(self, Trust::Pending(_))
    }
}

/// A photo and the category its corrections agree on, with the reason to trust it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    pub image: String,
    pub extension: String,
    pub category: String,
    pub trust: Trust,
    /// Every correction behind it.
    pub corrections: usize,
}

pub struct FeedbackStore {
    dir: PathBuf,
    max_corrections: usize,
    min_agreeing_users: usize,
    /// One writer at a time within the process (appends and compaction).
    writing: Mutex<()>,
}

impl FeedbackStore {
    pub fn open(config: &FeedbackConfig) -> FeedbackStore {
        FeedbackStore { dir: config.dir.clone(), max_corrections: config.max_corrections.max(1), min_agreeing_users: config.min_agreeing_users.max(1), writing: Mutex::new(()) }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("corrections.jsonl")
    }

    pub fn image_path(&self, correction: &Correction) -> PathBuf {
        self.dir.join("images").join(format!("{}.{}", correction.image, correction.extension))
    }

    /// Keeps `photo` (once per content) and appends the correction; drops the oldest past the cap.
    pub fn record(&self, photo: &[u8], searched: &[String], picked: &str, user: u64, moderator: bool) -> anyhow::Result<Correction> {
        let extension = image::guess_format(photo).ok().and_then(|f| f.extensions_str().first().copied()).unwrap_or("img").to_string();
        let unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let correction = Correction { image: hex::encode(Sha256::digest(photo)), extension, searched: searched.to_vec(), picked: picked.to_string(), user, moderator, unix_s };
        let _writing = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let image = self.image_path(&correction);
        if !image.exists() {
            files::write_atomically(&image, photo)?;
        }
        files::append_line(&self.log(), &serde_json::to_vec(&correction)?)?;
        let (kept, _) = self.list()?;
        if kept.len() > self.max_corrections {
            self.compact(&kept[kept.len() - self.max_corrections..])?;
        }
        Ok(correction)
    }

    /// Rewrites the log with `keep` (atomically) and deletes the photos no line refers to.
    fn compact(&self, keep: &[Correction]) -> anyhow::Result<()> {
        let mut text = String::new();
        for correction in keep {
            text.push_str(&serde_json::to_string(correction)?);
            text.push('\n');
        }
        files::write_atomically(&self.log(), text.as_bytes())?;
        let referenced: BTreeSet<PathBuf> = keep.iter().map(|c| self.image_path(c)).collect();
        for entry in std::fs::read_dir(self.dir.join("images"))?.flatten() {
            if !referenced.contains(&entry.path()) {
                std::fs::remove_file(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    /// Every correction, oldest first, and how many lines could not be read (a torn last line).
    pub fn list(&self) -> anyhow::Result<(Vec<Correction>, usize)> {
        files::read_json_lines(&self.log())
    }

    /// One label per photo that has corrections: a moderator's latest pick, else the category
    /// the most distinct users picked.
    pub fn labels(&self, corrections: &[Correction]) -> Vec<Label> {
        let mut by_image: BTreeMap<&str, Vec<&Correction>> = BTreeMap::new();
        for correction in corrections {
            by_image.entry(&correction.image).or_default().push(correction);
        }
        by_image
            .into_values()
            .map(|picks| {
                let first = picks[0];
                let label = |category: &str, trust: Trust| Label { image: first.image.clone(), extension: first.extension.clone(), category: category.to_string(), trust, corrections: picks.len() };
                if let Some(moderator) = picks.iter().rev().find(|c| c.moderator) {
                    return label(&moderator.picked, Trust::Moderator);
                }
                let mut users: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
                for pick in &picks {
                    users.entry(&pick.picked).or_default().insert(pick.user);
                }
                let (category, agreeing) = users.into_iter().max_by_key(|(_, u)| u.len()).map(|(c, u)| (c, u.len())).unwrap_or_default();
                label(category, if agreeing >= self.min_agreeing_users { Trust::Agreed(agreeing) } else { Trust::Pending(agreeing) })
            })
            .collect()
    }

    /// Copies the trusted labels' photos into `out/<category>/` (the layout `train` reads);
    /// returns how many.
    pub fn export(&self, out: &Path) -> anyhow::Result<usize> {
        let (corrections, _) = self.list()?;
        let mut exported = 0;
        for label in self.labels(&corrections).into_iter().filter(|l| l.trust.trusted()) {
            let source = self.dir.join("images").join(format!("{}.{}", label.image, label.extension));
            let target = out.join(&label.category).join(format!("feedback-{}.{}", &label.image[..16], label.extension));
            let bytes = std::fs::read(&source).with_context(|| format!("the photo of a correction is missing: {}", source.display()))?;
            files::write_atomically(&target, &bytes)?;
            exported += 1;
        }
        Ok(exported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max: usize) -> FeedbackStore {
        FeedbackStore::open(&FeedbackConfig { dir: dir.to_path_buf(), max_corrections: max, min_agreeing_users: 2 })
    }

    fn photo(n: u8) -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(4, 4, image::Rgb([n, 0, 0])).write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn trust_needs_a_moderator_or_enough_distinct_users() {
        let scratch = tempfile::tempdir().unwrap();
        let feedback = store(scratch.path(), 100);
        let searched = ["coat".to_string()];
        // Photo 1: one shopper, twice: not yet. Photo 2: two shoppers agree. Photo 3: shoppers
        // say shirt, a moderator says pullover: the moderator wins.
        feedback.record(&photo(1), &searched, "shirt", 7, false).unwrap();
        feedback.record(&photo(1), &searched, "shirt", 7, false).unwrap();
        feedback.record(&photo(2), &searched, "shirt", 7, false).unwrap();
        feedback.record(&photo(2), &searched, "shirt", 8, false).unwrap();
        for user in [7, 8, 9] {
            feedback.record(&photo(3), &searched, "shirt", user, false).unwrap();
        }
        feedback.record(&photo(3), &searched, "pullover", 1, true).unwrap();
        let (corrections, unreadable) = feedback.list().unwrap();
        assert_eq!((corrections.len(), unreadable), (8, 0));
        assert_eq!(std::fs::read_dir(scratch.path().join("images")).unwrap().count(), 3, "each photo stored once");
        let labels = feedback.labels(&corrections);
        let of = |n: u8| labels.iter().find(|l| l.image == hex::encode(Sha256::digest(photo(n)))).unwrap();
        assert_eq!((of(1).category.as_str(), &of(1).trust), ("shirt", &Trust::Pending(1)));
        assert_eq!((of(2).category.as_str(), &of(2).trust), ("shirt", &Trust::Agreed(2)));
        assert_eq!((of(3).category.as_str(), &of(3).trust), ("pullover", &Trust::Moderator));

        let out = scratch.path().join("export");
        assert_eq!(feedback.export(&out).unwrap(), 2);
        assert_eq!(std::fs::read_dir(out.join("shirt")).unwrap().count(), 1);
        let exported = std::fs::read_dir(out.join("pullover")).unwrap().next().unwrap().unwrap().path();
        assert_eq!(std::fs::read(exported).unwrap(), photo(3));
    }

    #[test]
    fn the_oldest_go_past_the_cap_with_their_photos_and_a_torn_line_is_skipped() {
        let scratch = tempfile::tempdir().unwrap();
        let feedback = store(scratch.path(), 3);
        for n in 0..5 {
            feedback.record(&photo(n), &[], "shirt", u64::from(n), false).unwrap();
        }
        let (corrections, _) = feedback.list().unwrap();
        assert_eq!(corrections.iter().map(|c| c.user).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(std::fs::read_dir(scratch.path().join("images")).unwrap().count(), 3, "dropped corrections' photos are deleted");
        // A crash mid-append leaves a torn line: it is counted and skipped, the rest survives.
        let mut log = std::fs::OpenOptions::new().append(true).open(scratch.path().join("corrections.jsonl")).unwrap();
        std::io::Write::write_all(&mut log, b"{\"image\":\"ab").unwrap();
        let (corrections, unreadable) = feedback.list().unwrap();
        assert_eq!((corrections.len(), unreadable), (3, 1));
        // A store reopened (a restart) reads the same, and goes on after the torn line.
        let reopened = store(scratch.path(), 10);
        assert_eq!(reopened.list().unwrap().0, corrections);
        reopened.record(&photo(9), &[], "coat", 9, true).unwrap();
        assert_eq!(reopened.list().unwrap().0.iter().map(|c| c.user).collect::<Vec<_>>(), [2, 3, 4, 9]);
    }
}
