//! Turning image bytes into pixels: decoding with size and pixel limits, EXIF orientation,
//! alpha flattened on white, grayscale and 16-bit images made 8-bit RGB. No tensors: the
//! backbones' resizing and normalisation are `vision::preprocess`.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// What an image may cost before it is refused.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_bytes: u64,
    pub max_pixels: u64,
}

impl ImageLimits {
    pub fn from_config(limits: &crate::config::LimitsConfig) -> ImageLimits {
        ImageLimits { max_bytes: limits.max_image_mb * MIB, max_pixels: limits.max_image_megapixels * 1_000_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty")]
    Empty,
    #[error("the image is {} MB; the limit is {} MB (limits.max_image_mb)", mb(*bytes), mb(*max))]
    TooLarge { bytes: u64, max: u64 },
    #[error("the image is {width}x{height} pixels; the limit is {max} pixels (limits.max_image_megapixels)")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("not an image lookalike can read (JPEG, PNG, WebP, GIF, BMP): {0}")]
    Unsupported(String),
    #[error("the image is damaged: {0}")]
    Corrupt(String),
    /// The path is left out: the caller names the file where its reader may see it.
    #[error("cannot read the file: {source}")]
    Io { source: std::io::Error },
}

/// Sizes as users read them: MB of 2^20 bytes (MiB, as `limits.max_image_mb` counts), one decimal.
pub fn mb(bytes: u64) -> String {
    let mb = bytes as f64 / MIB as f64;
    if mb >= 10.0 || mb.fract() == 0.0 {
        format!("{mb:.0}")
    } else {
        format!("{mb:.1}")
    }
}

const MIB: u64 = 1024 * 1024;

/// Checks what can be checked without decoding pixels: size, signature, header dimensions.
/// Returns the header's decoder and its size, so that decoding starts from there.
fn open(bytes: &[u8], limits: ImageLimits) -> Result<(Box<dyn ImageDecoder + '_>, u32, u32), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageError::TooLarge { bytes: bytes.len() as u64, max: limits.max_bytes });
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|err| ImageError::Corrupt(err.to_string()))?;
    if reader.format().is_none() {
        return Err(ImageError::Unsupported("unrecognised file signature".into()));
    }
    let decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(ImageError::TooManyPixels { width, height, max: limits.max_pixels });
    }
    Ok((Box::new(decoder), width, height))
}

/// Refuses what [`decode`] would refuse from the header alone (empty, too large, not an image,
/// too many pixels), cheaply, before anything expensive such as loading the models; returns
/// the dimensions.
pub fn check(bytes: &[u8], limits: ImageLimits) -> Result<(u32, u32), ImageError> {
    open(bytes, limits).map(|(_, width, height)| (width, height))
}

/// Decodes `bytes` into upright 8-bit RGB, refusing oversized files and pixel bombs before
/// the pixels are allocated.
pub fn decode(bytes: &[u8], limits: ImageLimits) -> Result<RgbImage, ImageError> {
    let (mut decoder, _, _) = open(bytes, limits)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    image.apply_orientation(orientation);
    Ok(flatten_to_rgb(image))
}

/// Reads an image file, never more than the limit + 1 byte: a 4 GB file is refused from its
/// size, before any of it is read.
pub fn read(path: &Path, limits: ImageLimits) -> Result<Vec<u8>, ImageError> {
    use std::io::Read;
    let io = |source| ImageError::Io { source };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limits.max_bytes {
        return Err(ImageError::TooLarge { bytes: size, max: limits.max_bytes });
    }
    // The file may grow between the size check and the read.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limits.max_bytes + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageError::TooLarge { bytes: bytes.len() as u64, max: limits.max_bytes });
    }
    Ok(bytes)
}

pub fn load(path: &Path, limits: ImageLimits) -> Result<RgbImage, ImageError> {
    decode(&read(path, limits)?, limits)
}

/// [`load`] for many files, spread over the machine's cores: a GPU embeds a batch of 64 in tens
/// of milliseconds, and decoding them one after another would keep it waiting.
pub fn load_many(paths: &[std::path::PathBuf], limits: ImageLimits) -> Vec<Result<RgbImage, ImageError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(paths.len()).max(1);
    if threads == 1 {
        return paths.iter().map(|path| load(path, limits)).collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = paths.chunks(paths.len().div_ceil(threads)).map(|part| scope.spawn(move || part.iter().map(|path| load(path, limits)).collect::<Vec<_>>())).collect();
        parts.into_iter().flat_map(|part| part.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

fn classify(err: image::ImageError) -> ImageError {
    match err {
        image::ImageError::Unsupported(err) => ImageError::Unsupported(plain(&err.to_string())),
        other => ImageError::Corrupt(plain(&other.to_string())),
    }
}

/// A decoder's message without the Rust debug dumps some append ("... while decoding
/// Chunk(ChunkType { type: IDAT, critical: true, ... })").
fn plain(message: &str) -> String {
    let message = message.split(" while decoding").next().unwrap_or(message);
    let message = message.split(['{', '(']).next().unwrap_or(message);
    message.trim_end_matches([' ', ':', ',']).to_string()
}

/// RGB, with any transparency composited over white (catalogue photos are shown on white).
fn flatten_to_rgb(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (target, source) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = source[3] as u32;
        for channel in 0..3 {
            target[channel] = ((source[channel] as u32 * alpha + 255 * (255 - alpha) + 127) / 255) as u8;
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ImageLimits = ImageLimits { max_bytes: 1 << 20, max_pixels: 1 << 20 };

    fn encode(image: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        bytes
    }

    #[test]
    fn grayscale_alpha_and_16_bit_become_rgb() {
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(4, 4, image::Luma([100])));
        assert_eq!(decode(&encode(gray, image::ImageFormat::Png), LIMITS).unwrap().get_pixel(0, 0).0, [100, 100, 100]);

        let clear = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(4, 4, image::Rgba([0, 0, 0, 0])));
        assert_eq!(decode(&encode(clear, image::ImageFormat::Png), LIMITS).unwrap().get_pixel(0, 0).0, [255, 255, 255], "transparent is white");

        let half = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(4, 4, image::Rgba([0, 0, 0, 128])));
        assert_eq!(decode(&encode(half, image::ImageFormat::Png), LIMITS).unwrap().get_pixel(0, 0).0, [127, 127, 127]);

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(4, 4, image::Rgb([65535u16, 0, 32896])));
        assert_eq!(decode(&encode(deep, image::ImageFormat::Png), LIMITS).unwrap().get_pixel(0, 0).0, [255, 0, 128]);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(matches!(decode(b"definitely not an image", LIMITS), Err(ImageError::Unsupported(_))));
        let mut png = encode(DynamicImage::new_rgb8(8, 8), image::ImageFormat::Png);
        png.truncate(png.len() / 2);
        assert!(matches!(decode(&png, LIMITS), Err(ImageError::Corrupt(_))), "truncated PNG");
        let big = encode(DynamicImage::new_rgb8(2000, 1000), image::ImageFormat::Png);
        let small_limits = ImageLimits { max_bytes: 1 << 30, max_pixels: 1_000_000 };
        assert!(matches!(decode(&big, small_limits), Err(ImageError::TooManyPixels { width: 2000, height: 1000, .. })));
        let tight = ImageLimits { max_bytes: 10, max_pixels: 1 << 30 };
        assert!(matches!(decode(&big, tight), Err(ImageError::TooLarge { .. })));
        assert_eq!(decode(b"", LIMITS).unwrap_err().to_string(), "the file is empty");
        assert_eq!(check(&big, ImageLimits { max_bytes: 1 << 30, max_pixels: 1 << 30 }).unwrap(), (2000, 1000), "dimensions from the header alone");
    }

    #[test]
    fn a_damaged_png_is_described_without_rust_internals() {
        let mut png = encode(DynamicImage::new_rgb8(8, 8), image::ImageFormat::Png);
        // Flip a byte of the IDAT chunk's data: its CRC no longer matches.
        let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
        png[idat + 6] ^= 0xFF;
        let message = decode(&png, LIMITS).unwrap_err().to_string();
        assert!(message.starts_with("the image is damaged"), "{message}");
        assert!(!message.contains('{') && !message.contains("ChunkType"), "{message}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_from_its_size_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        // 4 GiB, sparse: reading it would take seconds and 4 GiB of memory.
        std::fs::File::create(&path).unwrap().set_len(4 << 30).unwrap();
        let limits = ImageLimits { max_bytes: 8 * MIB, max_pixels: 1 << 30 };
        let err = read(&path, limits).unwrap_err();
        assert_eq!(err.to_string(), "the image is 4096 MB; the limit is 8 MB (limits.max_image_mb)");
        std::fs::write(&path, vec![0u8; (8 * MIB + 1) as usize]).unwrap();
        assert!(matches!(read(&path, limits), Err(ImageError::TooLarge { bytes, .. }) if bytes == 8 * MIB + 1));
        assert_eq!(mb(1_572_864), "1.5");
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 2x1 JPEG, left pixel white, right black, tagged "rotate 90 clockwise" (orientation 6).
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(16, 8, |x, _| if x < 8 { image::Rgb([255, 255, 255]) } else { image::Rgb([0, 0, 0]) }));
        let jpeg = encode(image, image::ImageFormat::Jpeg);
        let exif: &[u8] = &[0xFF, 0xE1, 0x00, 0x22, b'E', b'x', b'i', b'f', 0, 0, b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0];
        let mut tagged = jpeg[..2].to_vec();
        tagged.extend_from_slice(exif);
        tagged.extend_from_slice(&jpeg[2..]);
        let upright = decode(&tagged, LIMITS).unwrap();
        assert_eq!(upright.dimensions(), (8, 16), "rotated to portrait");
        assert!(upright.get_pixel(4, 2)[0] > 200 && upright.get_pixel(4, 13)[0] < 50, "white on top after a clockwise turn");
    }
}
