//! Attachments: checked before the download (declared size and type), during it (a byte cap
//! that stops reading, a timeout) and after it (magic bytes); decoding with pixel limits happens
//! in the search service.

use std::time::Duration;

/// Why an attachment is not searched; the text is what the user reads.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttachmentError {
    #[error("`{0}` is not an image: send a PNG, JPEG, WebP, GIF or BMP photo")]
    NotAnImage(String),
    #[error("`{name}` is {} MB; the limit is {} MB: send a smaller photo", crate::imaging::mb(*size), crate::imaging::mb(*max_bytes))]
    TooLarge { name: String, size: u64, max_bytes: u64 },
    #[error("downloading the photo took longer than {0} s; try again")]
    Timeout(u64),
    #[error("the photo could not be downloaded from Discord ({0}); try again")]
    Download(String),
}

/// What Discord says about an attachment.
#[derive(Debug, Clone)]
pub struct Declared<'a> {
    pub name: &'a str,
    pub size: u64,
    pub content_type: Option<&'a str>,
    pub url: &'a str,
}

const IMAGE_TYPES: [&str; 5] = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"];

/// Whether a file name ends in an image extension this bot reads.
pub fn has_image_extension(name: &str) -> bool {
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    crate::catalogue::IMAGE_EXTENSIONS.contains(&extension.as_str())
}

/// Refuses what is declared too large or not an image, before a byte is downloaded.
pub fn check_declared(declared: &Declared, max_bytes: u64) -> Result<(), AttachmentError> {
    let by_type = declared.content_type.map(|t| IMAGE_TYPES.iter().any(|known| t.starts_with(known)));
    if !by_type.unwrap_or_else(|| has_image_extension(declared.name)) {
        return Err(AttachmentError::NotAnImage(declared.name.to_string()));
    }
    if declared.size > max_bytes {
        return Err(too_large(declared.name, declared.size, max_bytes));
    }
    Ok(())
}

fn too_large(name: &str, size: u64, max_bytes: u64) -> AttachmentError {
    AttachmentError::TooLarge { name: name.to_string(), size, max_bytes }
}

/// The image format the bytes start with, if any this bot reads.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => Some("png"),
        [0xFF, 0xD8, 0xFF, ..] => Some("jpeg"),
        [b'G', b'I', b'F', b'8', ..] => Some("gif"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("webp"),
        [b'B', b'M', ..] => Some("bmp"),
        _ => None,
    }
}

/// Downloads at most `max_bytes` (reading stops as soon as more arrive), within `timeout`, and
/// checks the magic bytes.
pub async fn download(client: &reqwest::Client, declared: &Declared<'_>, max_bytes: u64, timeout: Duration) -> Result<Vec<u8>, AttachmentError> {
    check_declared(declared, max_bytes)?;
    let fetch = async {
        let mut response = client.get(declared.url).send().await.and_then(|r| r.error_for_status()).map_err(|e| AttachmentError::Download(e.without_url().to_string()))?;
        if let Some(length) = response.content_length().filter(|&l| l > max_bytes) {
            return Err(too_large(declared.name, length, max_bytes));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| AttachmentError::Download(e.without_url().to_string()))? {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large(declared.name, (bytes.len() + chunk.len()) as u64, max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let bytes = tokio::time::timeout(timeout, fetch).await.map_err(|_| AttachmentError::Timeout(timeout.as_secs().max(1)))??;
    sniff(&bytes).ok_or_else(|| AttachmentError::NotAnImage(declared.name.to_string()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared<'a>(name: &'a str, size: u64, content_type: Option<&'a str>) -> Declared<'a> {
        Declared { name, size, content_type, url: "http://127.0.0.1:9/x" }
    }

    #[test]
    fn declared_type_and_size_are_checked_first() {
        assert!(check_declared(&declared("a.png", 10, Some("image/png")), 100).is_ok());
        assert!(check_declared(&declared("a.jpg", 10, None), 100).is_ok(), "no type: the extension decides");
        assert_eq!(check_declared(&declared("notes.pdf", 10, Some("application/pdf")), 100), Err(AttachmentError::NotAnImage("notes.pdf".into())));
        // MB of 2^20 bytes, as limits.max_image_mb counts them everywhere.
        let err = check_declared(&declared("big.png", 9 << 20, Some("image/png")), 8 << 20).unwrap_err();
        assert_eq!(err.to_string(), "`big.png` is 9 MB; the limit is 8 MB: send a smaller photo");
    }

    #[test]
    fn magic_bytes_name_the_format() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n"), Some("png"));
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0"), Some("jpeg"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(sniff(b"%PDF-1.7"), None);
    }
}
