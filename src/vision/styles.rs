//! Styled renderings of a catalogue picture: the same item as another maker, printer or camera
//! might show it (colours shifted, greyscale, blur, fewer tones, an outline drawing, another
//! background, a crop). Tuning teaches the backbones' last stages that a picture and its
//! renderings are one item; the benchmark's query vendor is never among them.

use image::{imageops, Rgb, RgbImage};

use crate::rng::Rng;

/// The styles, applied two at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    ColourJitter,
    Greyscale,
    Blur,
    Posterise,
    Outline,
    Background,
    Crop,
}

pub const STYLES: [Style; 7] = [Style::ColourJitter, Style::Greyscale, Style::Blur, Style::Posterise, Style::Outline, Style::Background, Style::Crop];

/// `image` under two different styles that `seed` picks (the same seed, the same rendering).
pub fn render(image: &RgbImage, seed: u64) -> RgbImage {
    let mut rng = Rng::new(seed);
    let first = STYLES[rng.below(STYLES.len() as u64) as usize];
    let mut second = STYLES[rng.below(STYLES.len() as u64) as usize];
    if second == first {
        second = STYLES[(STYLES.iter().position(|&s| s == first).unwrap_or(0) + 1) % STYLES.len()];
    }
    let once = apply(image, first, &mut rng);
    apply(&once, second, &mut rng)
}

pub fn apply(image: &RgbImage, style: Style, rng: &mut Rng) -> RgbImage {
    let mut out = image.clone();
    match style {
        Style::ColourJitter => {
            let (gain, shift) = (0.7 + 0.6 * rng.unit_f64() as f32, (rng.unit_f64() as f32 - 0.5) * 60.0);
            // A rotation of the channels' roles, partly: hue moves, the drawing stays.
            let mix = rng.unit_f64() as f32 * 0.6;
            for pixel in out.pixels_mut() {
                let [r, g, b] = pixel.0.map(f32::from);
                let rotated = [r * (1.0 - mix) + g * mix, g * (1.0 - mix) + b * mix, b * (1.0 - mix) + r * mix];
                pixel.0 = rotated.map(|v| (v * gain + shift).clamp(0.0, 255.0) as u8);
            }
        }
        Style::Greyscale => {
            for pixel in out.pixels_mut() {
                let [r, g, b] = pixel.0.map(f32::from);
                let grey = (0.299 * r + 0.587 * g + 0.114 * b) as u8;
                pixel.0 = [grey; 3];
            }
        }
        Style::Blur => out = imageops::blur(image, 0.6 + 2.0 * rng.unit_f64() as f32),
        Style::Posterise => {
            let levels = 3 + rng.below(4) as u32;
            let step = 255 / (levels - 1);
            for pixel in out.pixels_mut() {
                pixel.0 = pixel.0.map(|v| ((v as u32 + step / 2) / step * step).min(255) as u8);
            }
        }
        Style::Outline => out = outline(image),
        Style::Background => {
            let colour = Rgb([rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8]);
            // Near-white pixels are the background of a catalogue picture (transparency is white).
            for pixel in out.pixels_mut() {
                if pixel.0.iter().all(|&v| v > 235) {
                    *pixel = colour;
                }
            }
        }
        Style::Crop => {
            let (width, height) = image.dimensions();
            let keep = 0.7 + 0.25 * rng.unit_f64();
            let (w, h) = (((width as f64 * keep) as u32).max(1), ((height as f64 * keep) as u32).max(1));
            let (x, y) = (rng.below((width - w + 1) as u64) as u32, rng.below((height - h + 1) as u64) as u32);
            out = imageops::resize(&imageops::crop_imm(image, x, y, w, h).to_image(), width, height, imageops::FilterType::Triangle);
        }
    }
    out
}

/// Dark lines where the picture's brightness changes (Sobel), on white: a line drawing of it.
fn outline(image: &RgbImage) -> RgbImage {
    let grey = imageops::grayscale(image);
    let (width, height) = grey.dimensions();
    let at = |x: i64, y: i64| grey.get_pixel(x.clamp(0, width as i64 - 1) as u32, y.clamp(0, height as i64 - 1) as u32).0[0] as f32;
    RgbImage::from_fn(width, height, |x, y| {
        let (x, y) = (x as i64, y as i64);
        let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1) - at(x - 1, y - 1) - 2.0 * at(x - 1, y) - at(x - 1, y + 1);
        let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1) - at(x - 1, y - 1) - 2.0 * at(x, y - 1) - at(x + 1, y - 1);
        let ink = (gx.hypot(gy) / 4.0).min(255.0) as u8;
        Rgb([255 - ink; 3])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture() -> RgbImage {
        // A red square on white.
        RgbImage::from_fn(32, 32, |x, y| if (8..24).contains(&x) && (8..24).contains(&y) { Rgb([200, 30, 30]) } else { Rgb([255, 255, 255]) })
    }

    #[test]
    fn each_style_changes_the_picture_and_keeps_its_size() {
        let image = picture();
        for style in STYLES {
            let styled = apply(&image, style, &mut Rng::new(3));
            assert_eq!(styled.dimensions(), image.dimensions(), "{style:?}");
            assert_ne!(styled, image, "{style:?} changed nothing");
        }
        let grey = apply(&image, Style::Greyscale, &mut Rng::new(1));
        assert!(grey.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
        let lines = apply(&image, Style::Outline, &mut Rng::new(1));
        assert_eq!(lines.get_pixel(2, 2).0, [255; 3], "flat white stays white");
        assert!(lines.get_pixel(8, 16).0[0] < 128, "the square's edge is drawn dark");
        let background = apply(&image, Style::Background, &mut Rng::new(1));
        assert_eq!(background.get_pixel(16, 16), image.get_pixel(16, 16), "the item is kept");
    }

    #[test]
    fn a_seed_gives_one_rendering() {
        let image = picture();
        assert_eq!(render(&image, 9), render(&image, 9));
        assert!((0..8).map(|seed| render(&image, seed)).collect::<Vec<_>>().windows(2).any(|w| w[0] != w[1]), "seeds differ");
    }
}
