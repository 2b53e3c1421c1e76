//! Catalogue edits (`lookalike catalogue add / remove`, `/catalogue add / remove`): one image
//! file and its metadata row at a time, each file written whole or not at all. The index picks
//! an edit up with an incremental re-index, which embeds only the new image.

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::{is_json_lines, keys, parse_rows, scan, Metadata};
use crate::files::write_atomically;
use crate::imaging::{self, ImageLimits};

/// Why an edit was not made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The request cannot be done as asked (unknown category, duplicate, no such item, an
    /// unreadable photo). It names no path, so a chat may show it as it is.
    #[error("{0}")]
    Refused(String),
    /// The machine's failure (a disk, a file); it may name server paths, so it goes to the log.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

fn refuse<T>(why: String) -> Result<T, EditError> {
    Err(EditError::Refused(why))
}

/// Stores `photo` as `category/<first 16 hex digits of its sha256>.<format>` under `root`, and
/// its metadata (when any field is given) in `metadata_file`. Returns the new item's id.
pub fn add(root: &Path, metadata_file: &Path, photo: &[u8], limits: ImageLimits, category: &str, metadata: &Metadata) -> Result<String, EditError> {
    let catalogue = scan(root)?;
    if !catalogue.categories.iter().any(|c| c == category) {
        return refuse(format!(
            "there is no category `{category}`: the catalogue has {}. A new category is a re-train: add a folder of its images to the training data, run `lookalike train`, then add items",
            catalogue.categories.join(", ")
        ));
    }
    if let Err(err) = imaging::decode(photo, limits) {
        return refuse(format!("the photo cannot be added: {err}"));
    }
    let extension = image::guess_format(photo).ok().and_then(|f| f.extensions_str().first().copied()).unwrap_or("png");
    let id = format!("{category}/{}.{extension}", &hex::encode(Sha256::digest(photo))[..16]);
    if root.join(&id).exists() {
        return refuse(format!("this photo is already in the catalogue as {id}"));
    }
    if !metadata.is_empty() {
        if metadata_file.as_os_str().is_empty() {
            return refuse("a title, price, link, description or tags need a metadata file: set catalogue.metadata (a .jsonl or .csv file)".into());
        }
        let mut rows = read_rows(metadata_file)?;
        rows.retain(|(key, _)| !names(key, &id));
        rows.push((id.clone(), metadata.clone()));
        write_rows(metadata_file, &rows)?;
    }
    write_atomically(&root.join(&id), photo)?;
    Ok(id)
}

/// Removes the item `item` (its id `category/file`, file name or file stem) and its metadata
/// rows. Returns its id.
pub fn remove(root: &Path, metadata_file: &Path, item: &str) -> Result<String, EditError> {
    let catalogue = scan(root)?;
    let found: Vec<_> = catalogue.entries.iter().filter(|e| names(item, &e.id)).collect();
    let entry = match found.as_slice() {
        [one] => *one,
        [] => return refuse(format!("no catalogue item `{item}`: give its id (`category/file`, as `lookalike catalogue list` and the command's autocomplete show), file name or stem")),
        many => return refuse(format!("`{item}` names {} items ({}): give the whole id", many.len(), many.iter().map(|e| e.id.as_str()).collect::<Vec<_>>().join(", "))),
    };
    // The file first: a crash before the rows are rewritten leaves a row naming nothing, which
    // no reply shows, never an item without its row.
    std::fs::remove_file(&entry.path).with_context(|| format!("cannot remove {}", entry.path.display()))?;
    if !metadata_file.as_os_str().is_empty() {
        let mut rows = read_rows(metadata_file)?;
        let before = rows.len();
        rows.retain(|(key, _)| !names(key, &entry.id));
        if rows.len() != before {
            write_rows(metadata_file, &rows)?;
        }
    }
    Ok(entry.id.clone())
}

/// Whether `key` (an id, a file name or a file stem, as metadata rows and commands give them)
/// names the item `id`.
fn names(key: &str, id: &str) -> bool {
    keys(id).contains(&key)
}

/// Every row of the metadata file in order (none when it does not exist yet).
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<(String, Metadata)>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_rows(path, &text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the rows back (JSON lines, or CSV with every column), whole or not at all.
pub fn write_rows(path: &Path, rows: &[(String, Metadata)]) -> anyhow::Result<()> {
    let mut text = Vec::new();
    if is_json_lines(path) {
        for (id, metadata) in rows {
            let mut line = serde_json::to_value(metadata)?;
            line["id"] = id.clone().into();
            text.extend(serde_json::to_vec(&line)?);
            text.push(b'\n');
        }
    } else {
        let mut writer = csv::Writer::from_writer(&mut text);
        writer.write_record(std::iter::once("id").chain(super::COLUMNS))?;
        for (id, metadata) in rows {
            writer.write_record(std::iter::once(id.clone()).chain(metadata.cells()))?;
        }
        writer.flush()?;
        drop(writer);
    }
    write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::MetadataTable;

    fn png(shade: u8) -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(8, 8, image::Rgb([shade, 0, 0])).write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    /// Any row, every column filled with text of any kind (commas, quotes, line breaks, accents),
    /// comes back from the metadata file as it went in, in CSV and in JSON lines alike.
    #[test]
    fn any_metadata_row_round_trips_through_both_file_kinds() {
        let mut rng = crate::rng::Rng::new(47);
        let alphabet: Vec<char> = "ab Z9,;|\"'\n\té€ <>&".chars().collect();
        let text = |rng: &mut crate::rng::Rng, separators: bool| -> String {
            let raw: String = (0..1 + rng.below(12)).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            let raw = if separators { raw } else { raw.replace([',', ';', '|'], "x") };
            // The CSV reader trims cells, so values are stored trimmed.
            Some(raw.trim().to_string()).filter(|t| !t.is_empty()).unwrap_or_else(|| "v".into())
        };
        let dir = tempfile::tempdir().unwrap();
        for round in 0..200 {
            let field = |rng: &mut crate::rng::Rng| (rng.below(3) > 0).then(|| text(rng, true));
            let metadata = Metadata {
                title: field(&mut rng),
                price: field(&mut rng),
                link: field(&mut rng),
                image_url: field(&mut rng),
                description: field(&mut rng),
                tags: (0..rng.below(4)).map(|_| text(&mut rng, false)).collect(),
                brand: field(&mut rng),
                colour: field(&mut rng),
                material: field(&mut rng),
                availability: field(&mut rng),
                feed_id: field(&mut rng),
                group: field(&mut rng),
            };
            let rows = vec![(format!("bag/{round}.png"), metadata)];
            for name in ["items.csv", "items.jsonl"] {
                let path = dir.path().join(name);
                write_rows(&path, &rows).unwrap();
                assert_eq!(read_rows(&path).unwrap(), rows, "{name}");
            }
        }
    }

    #[test]
    fn add_and_remove_keep_files_and_metadata_in_step() {
        let limits = ImageLimits { max_bytes: 1 << 20, max_pixels: 1 << 20 };
        for metadata_name in ["items.csv", "items.jsonl"] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("catalogue");
            std::fs::create_dir_all(root.join("bag")).unwrap();
            std::fs::write(root.join("bag/old.png"), png(1)).unwrap();
            let metadata_file = dir.path().join(metadata_name);
            let tote = Metadata { title: Some("Tote, canvas".into()), price: Some("19.99".into()), ..Metadata::default() };
            let id = add(&root, &metadata_file, &png(2), limits, "bag", &tote).unwrap();
            assert!(id.starts_with("bag/") && id.ends_with(".png") && root.join(&id).exists(), "{id}");
            assert_eq!(MetadataTable::load(&metadata_file).unwrap().get(&id), tote, "{metadata_name}");

            let refused = add(&root, &metadata_file, &png(3), limits, "lamp", &tote).unwrap_err();
            assert!(matches!(refused, EditError::Refused(_)), "a refusal a chat may show: {refused:#}");
            let unknown = format!("{refused:#}");
            assert!(unknown.contains("no category `lamp`") && unknown.contains("the catalogue has bag") && unknown.contains("re-train"), "{unknown}");
            assert!(format!("{:#}", add(&root, &metadata_file, &png(2), limits, "bag", &tote).unwrap_err()).contains("already in the catalogue"));
            assert!(add(&root, &metadata_file, b"\x89PNG\r\n\x1a\n broken", limits, "bag", &tote).is_err(), "a corrupt photo is refused");
            assert_eq!(std::fs::read_dir(root.join("bag")).unwrap().count(), 2, "nothing half-added");

            let stem = id.trim_start_matches("bag/").trim_end_matches(".png");
            assert_eq!(remove(&root, &metadata_file, stem).unwrap(), id);
            assert!(!root.join(&id).exists() && MetadataTable::load(&metadata_file).unwrap().get(&id).is_empty());
            assert!(format!("{:#}", remove(&root, &metadata_file, "nothing").unwrap_err()).contains("no catalogue item `nothing`"));
        }
    }
}
