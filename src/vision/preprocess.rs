//! The tensors each backbone expects from decoded pixels: resize, centre crop and the
//! normalisation the backbone's weights were trained with, one image or a batch, on any device.

use image::RgbImage;

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
    /// x / 255, minus OpenAI's CLIP mean, over its std, RGB (open_clip).
    Clip,
}

/// The antialiased filter the resize uses (PIL's, as torchvision and open_clip ask for it).
///
/// Bicubic (open_clip's transform) also takes torchvision's sizes exactly: the longer side
/// truncated, the crop's margin halved and rounded half to even; the parity test holds it to
/// open_clip's pixels. Bilinear (the backbones) keeps the rounding their indexes were built
/// with, at most one pixel off torchvision's, so that stored vectors stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Bilinear,
    Bicubic,
}

impl Resample {
    /// Source pixels the filter reads each side when enlarging.
    fn taps(self) -> i64 {
        match self {
            Resample::Bilinear => 1,
            Resample::Bicubic => 2,
        }
    }

    /// The resized length of a `long` side when the `short` one becomes `resize`.
    fn resized(self, long: i64, short: i64, resize: i64) -> i64 {
        match self {
            Resample::Bilinear => (long as f64 * resize as f64 / short as f64).round() as i64,
            Resample::Bicubic => resize * long / short,
        }
    }

    /// The first kept pixel of a centre crop.
    fn centre_offset(self, resized: i64, crop: i64) -> i64 {
        let margin = resized - crop;
        let half = margin / 2;
        match self {
            Resample::Bicubic if margin % 2 == 1 && half % 2 == 1 => half + 1,
            _ => half,
        }
    }
}

/// Resize the shorter side to `resize`, centre-crop `crop` x `crop`, normalise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub resize: u32,
    pub crop: u32,
    pub normalisation: Normalisation,
    pub resample: Resample,
}

/// A resized axis longer than this many crops is cut to the part the crop keeps before
/// resizing. Ordinary photos (up to about 4:1) never are, so their pixels match torchvision's
/// resize-then-crop (unless [`Preprocess::shrink`] first halved a large one); a 1 x 10,000 image would otherwise be scaled up to 2.56 million
/// pixels wide (about 8 GB of floats) only to keep 224 of them.
const MAX_RESIZED_CROPS: i64 = 4;

/// Which source pixels along one axis to resize, and to what length: all of them, or for an
/// extreme shape only the span the centre crop keeps plus the resampling filter's reach.
/// Returns (first source pixel, source pixels, resized length, first kept resized pixel).
fn axis_window(source: i64, resized: i64, crop: i64, resample: Resample) -> (i64, i64, i64, i64) {
    if resized <= MAX_RESIZED_CROPS * crop {
        return (0, source, resized, resample.centre_offset(resized, crop));
    }
    let scale = resized as f64 / source as f64;
    // An antialiased filter reads its taps each side when enlarging, taps/scale when shrinking.
    let reach = resample.taps() * (1.0f64).max(1.0 / scale).ceil() as i64 + 2;
    let kept = resample.centre_offset(resized, crop);
    let first = ((kept as f64 / scale).floor() as i64 - reach).max(0);
    let last = ((((kept + crop) as f64) / scale).ceil() as i64 + reach).min(source);
    let window_resized = (((last - first) as f64) * scale).round() as i64;
    let offset = ((kept as f64 - first as f64 * scale).round() as i64).clamp(0, (window_resized - crop).max(0));
    (first, last - first, window_resized.max(crop), offset)
}

impl Preprocess {
    /// The backbone's input for one image, on the CPU: a (3, crop, crop) float tensor.
    pub fn tensor(&self, image: &RgbImage) -> tch::Tensor {
        self.batch(std::slice::from_ref(image), tch::Device::Cpu).squeeze_dim(0)
    }

    /// The backbone's input for `images`, built on `device`: an (N, 3, crop, crop) float tensor.
    /// Resizing runs in libtorch (antialiased bilinear, as PIL and torchvision do): on photos it
    /// was 4x faster here than `image`'s triangle filter (measured by `lookalike bench --only
    /// vision`); bicubic for open_clip's transform. Images of one size travel and resize together: on a GPU one upload and a few
    /// launches per size instead of per image.
    pub fn batch(&self, images: &[RgbImage], device: tch::Device) -> tch::Tensor {
        let shrunk: Vec<std::borrow::Cow<RgbImage>> = images.iter().map(|image| self.shrink(image)).collect();
        let images = &shrunk[..];
        let mut groups: Vec<((u32, u32), Vec<usize>)> = Vec::new();
        for (n, image) in images.iter().enumerate() {
            match groups.iter_mut().find(|(size, _)| *size == image.dimensions()) {
                Some((_, members)) => members.push(n),
                None => groups.push((image.dimensions(), vec![n])),
            }
        }
        let crop = self.crop as i64;
        if groups.is_empty() {
            return tch::Tensor::zeros([0, 3, crop, crop], (tch::Kind::Float, device));
        }
        let parts: Vec<tch::Tensor> = groups
            .iter()
            .map(|((width, height), members)| {
                let pixels = match members[..] {
                    [only] => tch::Tensor::from_slice(images[only].as_raw()),
                    _ => tch::Tensor::from_slice(&members.iter().flat_map(|&n| images[n].as_raw().iter().copied()).collect::<Vec<u8>>()),
                };
                let pixels = pixels.view([members.len() as i64, *height as i64, *width as i64, 3]).to_device(device);
                self.resize_crop_normalise(&pixels)
            })
            .collect();
        let batch = tch::Tensor::cat(&parts, 0);
        if groups.len() == 1 {
            return batch;
        }
        // Back into the callers' order.
        let mut position = vec![0i64; images.len()];
        for (at, &n) in groups.iter().flat_map(|(_, members)| members).enumerate() {
            position[n] = at as i64;
        }
        batch.index_select(0, &tch::Tensor::from_slice(&position).to_device(device))
    }

    /// A photo far larger than the backbone needs, first shrunk in 8 bits (area averaging) to
    /// twice the size the antialiased resize then brings it to: a 36-megapixel photo no longer
    /// becomes 432 MB of floats. Smaller images pass unchanged, pixel for pixel as torchvision
    /// would see them.
    fn shrink<'a>(&self, image: &'a RgbImage) -> std::borrow::Cow<'a, RgbImage> {
        let (width, height) = image.dimensions();
        let target_short = 2 * self.resize.max(self.crop);
        let short = width.min(height);
        if short <= target_short {
            return std::borrow::Cow::Borrowed(image);
        }
        let scale = target_short as f64 / short as f64;
        let (new_width, new_height) = (((width as f64 * scale).round() as u32).max(1), ((height as f64 * scale).round() as u32).max(1));
        std::borrow::Cow::Owned(image::imageops::thumbnail(image, new_width, new_height))
    }

    /// (N, H, W, 3) bytes -> (N, 3, crop, crop) floats: shorter side to `resize`, centre crop,
    /// normalisation.
    fn resize_crop_normalise(&self, pixels: &tch::Tensor) -> tch::Tensor {
        let (height, width) = (pixels.size()[1], pixels.size()[2]);
        let crop = self.crop as i64;
        let (resize, short) = (self.resize as i64, width.min(height));
        let (new_height, new_width) = (self.resample.resized(height, short, resize).max(crop), self.resample.resized(width, short, resize).max(crop));
        let (top, rows, resized_rows, crop_top) = axis_window(height, new_height, crop, self.resample);
        let (left, columns, resized_columns, crop_left) = axis_window(width, new_width, crop, self.resample);
        let chw = pixels.narrow(1, top, rows).narrow(2, left, columns).permute([0, 3, 1, 2]).to_kind(tch::Kind::Float);
        let resized = match self.resample {
            _ if (resized_rows, resized_columns) == (rows, columns) => chw,
            Resample::Bilinear => chw.internal_upsample_bilinear2d_aa([resized_rows, resized_columns], false, None, None),
            // Bicubic overshoots: PIL clamps to 0-255, and so does this.
            Resample::Bicubic => chw.internal_upsample_bicubic2d_aa([resized_rows, resized_columns], false, None, None).clamp(0.0, 255.0),
        };
        let cropped = resized.narrow(2, crop_top, crop).narrow(3, crop_left, crop);
        let device = pixels.device();
        let per_channel = |values: [f32; 3]| tch::Tensor::from_slice(&values).view([1, 3, 1, 1]).to_device(device);
        match self.normalisation {
            Normalisation::ImageNet => (cropped / 255.0 - per_channel([0.485, 0.456, 0.406])) / per_channel([0.229, 0.224, 0.225]),
            Normalisation::CaffeBgr(means) => cropped.flip([1]) - per_channel(means),
            Normalisation::Centred128 => (cropped - 127.0) / 128.0,
            Normalisation::PlusMinusOne => cropped / 127.5 - 1.0,
            Normalisation::Clip => (cropped / 255.0 - per_channel(crate::clip::MEAN)) / per_channel(crate::clip::STD),
        }
        .contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisations_match_their_formulas() {
        let image = RgbImage::from_pixel(8, 8, image::Rgb([255, 128, 0]));
        let at = |t: &tch::Tensor| -> Vec<f32> { (0..3).map(|c| t.double_value(&[c, 0, 0]) as f32).collect() };
        let imagenet = Preprocess { resize: 8, crop: 4, normalisation: Normalisation::ImageNet, resample: Resample::Bilinear }.tensor(&image);
        assert_eq!(imagenet.size(), [3, 4, 4]);
        let expected = [(1.0 - 0.485) / 0.229, (128.0 / 255.0 - 0.456) / 0.224, (0.0 - 0.406) / 0.225];
        for (got, want) in at(&imagenet).iter().zip(expected) {
            assert!((got - want).abs() < 1e-5);
        }
        let caffe = Preprocess { resize: 8, crop: 4, normalisation: Normalisation::CaffeBgr([104.0, 117.0, 123.0]), resample: Resample::Bilinear }.tensor(&image);
        assert_eq!(at(&caffe), [0.0 - 104.0, 128.0 - 117.0, 255.0 - 123.0], "blue first");
        let lite = Preprocess { resize: 8, crop: 4, normalisation: Normalisation::Centred128, resample: Resample::Bilinear }.tensor(&image);
        assert_eq!(at(&lite), [1.0, 1.0 / 128.0, -127.0 / 128.0]);
        let keras = Preprocess { resize: 8, crop: 4, normalisation: Normalisation::PlusMinusOne, resample: Resample::Bilinear }.tensor(&image);
        assert!((at(&keras)[1] - (128.0 / 127.5 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn resize_keeps_aspect_then_crops_the_centre() {
        // A red stripe in the middle third of a wide image: after resizing the short side to
        // 100 and cropping 100x100, the stripe fills the centre and blue the edges.
        let image = RgbImage::from_fn(400, 200, |x, _| if (150..250).contains(&x) { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let out = Preprocess { resize: 100, crop: 100, normalisation: Normalisation::Centred128, resample: Resample::Bilinear }.tensor(&image);
        assert_eq!(out.size(), [3, 100, 100]);
        let red = |x: i64| out.double_value(&[0, 50, x]);
        assert!((red(50) - 1.0).abs() < 1e-6, "centre is red");
        assert!((red(2) + 127.0 / 128.0).abs() < 1e-6, "edges are blue: {}", red(2));
        assert!((out.double_value(&[2, 50, 2]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_batch_of_mixed_sizes_equals_its_images_one_by_one_in_order() {
        let images: Vec<RgbImage> = [(40, 30), (30, 40), (40, 30), (17, 90)]
            .iter()
            .enumerate()
            .map(|(n, &(w, h))| RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + n as u32 * 50) as u8, (y * 5) as u8, (x + y) as u8])))
            .collect();
        let preprocess = Preprocess { resize: 36, crop: 32, normalisation: Normalisation::ImageNet, resample: Resample::Bilinear };
        let batch = preprocess.batch(&images, tch::Device::Cpu);
        assert_eq!(batch.size(), [4, 3, 32, 32]);
        for (n, image) in images.iter().enumerate() {
            let alone = preprocess.tensor(image);
            assert!(batch.get(n as i64).allclose(&alone, 1e-5, 1e-5, false), "image {n} moved or changed in the batch");
        }
    }

    #[test]
    fn an_extreme_shape_is_cut_to_what_the_crop_keeps_before_resizing() {
        // Unbounded, a 10,000 x 1 strip would be resized to 2,560,000 x 256 floats (7.9 GB).
        let strip = RgbImage::from_fn(10_000, 1, |x, _| if (4_990..5_010).contains(&x) { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        assert!(axis_window(10_000, 2_560_000, 224, Resample::Bilinear).1 < 10, "only the columns that reach the crop are resized");
        let out = Preprocess { resize: 256, crop: 224, normalisation: Normalisation::Centred128, resample: Resample::Bilinear }.tensor(&strip);
        assert_eq!(out.size(), [3, 224, 224]);
        assert!((out.double_value(&[0, 100, 112]) - 1.0).abs() < 1e-5, "the red centre survives the cut");
        // An ordinary 4:1 panorama is not cut: the same pixels as resizing the whole image.
        assert_eq!(axis_window(800, 1024, 256, Resample::Bilinear), (0, 800, 1024, 384));
        // open_clip's sizes: 640 x 480 to 298 (truncated) x 224, the crop 37 in (37.0 exactly); 97 wide to 224 of 346 high, 61 down.
        assert_eq!((Resample::Bicubic.resized(640, 480, 224), Resample::Bicubic.centre_offset(298, 224)), (298, 37));
        assert_eq!((Resample::Bicubic.resized(150, 97, 224), Resample::Bicubic.centre_offset(346, 224), Resample::Bilinear.resized(150, 97, 224)), (346, 61, 346));
        assert_eq!((Resample::Bicubic.centre_offset(227, 224), Resample::Bicubic.centre_offset(229, 224), Resample::Bilinear.centre_offset(229, 224)), (2, 2, 2));
    }
}
