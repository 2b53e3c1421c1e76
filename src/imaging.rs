//! Turning image bytes into the tensors each backbone expects: decoding with limits, EXIF
//! orientation, alpha flattened on white, grayscale and 16-bit images made 8-bit RGB, then
//! resize, centre crop and the normalisation the backbone's weights were trained with.

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
        ImageLimits { max_bytes: limits.max_image_mb * 1024 * 1024, max_pixels: limits.max_image_megapixels * 1_000_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image is {bytes} bytes; the limit is {max} (limits.max_image_mb)")]
    TooLarge { bytes: u64, max: u64 },
    #[error("the image is {width}x{height} pixels; the limit is {max} pixels (limits.max_image_megapixels)")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("not an image lookalike can read (JPEG, PNG, WebP, GIF, BMP): {0}")]
    Unsupported(String),
    #[error("the image is damaged: {0}")]
    Corrupt(String),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Decodes `bytes` into upright 8-bit RGB, refusing oversized files and pixel bombs before
/// the pixels are allocated.
pub fn decode(bytes: &[u8], limits: ImageLimits) -> Result<RgbImage, ImageError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageError::TooLarge { bytes: bytes.len() as u64, max: limits.max_bytes });
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|err| ImageError::Corrupt(err.to_string()))?;
    if reader.format().is_none() {
        return Err(ImageError::Unsupported("unrecognised file signature".into()));
    }
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(ImageError::TooManyPixels { width, height, max: limits.max_pixels });
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    image.apply_orientation(orientation);
    Ok(flatten_to_rgb(image))
}

pub fn load(path: &Path, limits: ImageLimits) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io { path: path.display().to_string(), source })?;
    decode(&bytes, limits)
}

fn classify(err: image::ImageError) -> ImageError {
    match err {
        image::ImageError::Unsupported(err) => ImageError::Unsupported(err.to_string()),
        other => ImageError::Corrupt(other.to_string()),
    }
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

/// The input normalisation a backbone's weights were trained with, applied to 0-255 RGB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalisation {
    /// x / 255, minus mean, over std, RGB (torchvision).
    ImageNet,
    /// BGR order, 0-255 minus per-channel means (caffe).
    CaffeBgr([f32; 3]),
    /// (x - 127) / 128 (EfficientNet-Lite).
    Centred128,
    /// x / 127.5 - 1 (Keras InceptionV3).
    PlusMinusOne,
}

/// Resize the shorter side to `resize`, centre-crop `crop` x `crop`, normalise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub resize: u32,
    pub crop: u32,
    pub normalisation: Normalisation,
}

impl Preprocess {
    /// The backbone's input for one image: a (3, crop, crop) float tensor. Resizing runs in
    /// libtorch (antialiased bilinear, as PIL and torchvision do): on photos it was 4x faster
    /// here than `image`'s triangle filter (measured by `lookalike bench --only vision`).
    pub fn tensor(&self, image: &RgbImage) -> tch::Tensor {
        let (width, height) = (image.width() as i64, image.height() as i64);
        let chw = tch::Tensor::from_slice(image.as_raw()).view([height, width, 3]).permute([2, 0, 1]).to_kind(tch::Kind::Float).unsqueeze(0);
        let (resize, crop) = (self.resize as f64, self.crop as i64);
        let scale = resize / width.min(height) as f64;
        let (new_height, new_width) = (((height as f64 * scale).round() as i64).max(crop), ((width as f64 * scale).round() as i64).max(crop));
        let resized = if (new_height, new_width) == (height, width) {
            chw
        } else {
            chw.internal_upsample_bilinear2d_aa([new_height, new_width], false, None, None)
        };
        let cropped = resized.narrow(2, (new_height - crop) / 2, crop).narrow(3, (new_width - crop) / 2, crop).squeeze_dim(0);
        match self.normalisation {
            Normalisation::ImageNet => {
                let mean = tch::Tensor::from_slice(&[0.485f32, 0.456, 0.406]).view([3, 1, 1]);
                let std = tch::Tensor::from_slice(&[0.229f32, 0.224, 0.225]).view([3, 1, 1]);
                (cropped / 255.0 - mean) / std
            }
            Normalisation::CaffeBgr(means) => cropped.flip([0]) - tch::Tensor::from_slice(&means).view([3, 1, 1]),
            Normalisation::Centred128 => (cropped - 127.0) / 128.0,
            Normalisation::PlusMinusOne => cropped / 127.5 - 1.0,
        }
        .contiguous()
    }
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
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 2x1 JPEG, left pixel white, right black, tagged "rotate 90 clockwise" (orientation 6).
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(16, 8, |x, _| if x < 8 { image::Rgb([255, 255, 255]) } else { image::Rgb([0, 0, 0]) }));
        let jpeg = encode(image, image::ImageFormat::Jpeg);
        let exif: &[u8] = &[
            0xFF, 0xE1, 0x00, 0x22, b'E', b'x', b'i', b'f', 0, 0, b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0,
        ];
        let mut tagged = jpeg[..2].to_vec();
        tagged.extend_from_slice(exif);
        tagged.extend_from_slice(&jpeg[2..]);
        let upright = decode(&tagged, LIMITS).unwrap();
        assert_eq!(upright.dimensions(), (8, 16), "rotated to portrait");
        assert!(upright.get_pixel(4, 2)[0] > 200 && upright.get_pixel(4, 13)[0] < 50, "white on top after a clockwise turn");
    }

    #[test]
    fn normalisations_match_their_formulas() {
        let image = RgbImage::from_pixel(8, 8, image::Rgb([255, 128, 0]));
        let at = |t: &tch::Tensor| -> Vec<f32> { (0..3).map(|c| t.double_value(&[c, 0, 0]) as f32).collect() };
        let imagenet = Preprocess { resize: 8, crop: 4, normalisation: Normalisation::ImageNet }.tensor(&image);
        assert_eq!(imagenet.size(), [3, 4, 4]);
        let expected = [(1.0 - 0.485) / 0.229, (128.0 / 255.0 - 0.456) / 0.224, (0.0 - 0.406) / 0.225];
        for (got, want) in at(&imagenet).iter().zip(expected) {
            assert!((got - want).abs() < 1e-5);
        }
        let caffe = Preprocess { resize: 8, crop: 4, normalisation: Normalisation::CaffeBgr([104.0, 117.0, 123.0]) }.tensor(&image);
        assert_eq!(at(&caffe), [0.0 - 104.0, 128.0 - 117.0, 255.0 - 123.0], "blue first");
        let lite = Preprocess { resize: 8, crop: 4, normalisation: Normalisation::Centred128 }.tensor(&image);
        assert_eq!(at(&lite), [1.0, 1.0 / 128.0, -127.0 / 128.0]);
        let keras = Preprocess { resize: 8, crop: 4, normalisation: Normalisation::PlusMinusOne }.tensor(&image);
        assert!((at(&keras)[1] - (128.0 / 127.5 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn resize_keeps_aspect_then_crops_the_centre() {
        // A red stripe in the middle third of a wide image: after resizing the short side to
        // 100 and cropping 100x100, the stripe fills the centre and blue the edges.
        let image = RgbImage::from_fn(400, 200, |x, _| if (150..250).contains(&x) { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let out = Preprocess { resize: 100, crop: 100, normalisation: Normalisation::Centred128 }.tensor(&image);
        assert_eq!(out.size(), [3, 100, 100]);
        let red = |x: i64| out.double_value(&[0, 50, x]);
        assert!((red(50) - 1.0).abs() < 1e-6, "centre is red");
        assert!((red(2) + 127.0 / 128.0).abs() < 1e-6, "edges are blue: {}", red(2));
        assert!((out.double_value(&[2, 50, 2]) - 1.0).abs() < 1e-6);
    }
}
