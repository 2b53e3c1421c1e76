//! Colour measured from pixels and compared in CIELAB: sRGB converted to Lab (D65), differences
//! in CIEDE2000, a picture's dominant colours as a short signature of swatches, how close an item
//! is to a wanted colour, and the table of colour words shoppers use. It works on pixels and
//! numbers only and knows nothing of torch, Discord or the index.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// A colour in CIELAB (D65 white), L in 0..100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lab {
    pub l: f32,
    pub a: f32,
    pub b: f32,
}

/// The D65 reference white in XYZ, the white point sRGB is defined against.
const WHITE: [f64; 3] = [0.95047, 1.0, 1.08883];
/// The CIE constants of the Lab transfer function, as exact ratios rather than rounded decimals
/// so that the curve is continuous where its cube-root and linear parts meet.
const EPSILON: f64 = 216.0 / 24389.0;
const KAPPA: f64 = 24389.0 / 27.0;

/// sRGB (8-bit, gamma-encoded) to CIELAB D65, the standard formulas (sRGB companding, the sRGB->XYZ matrix, D65 white 0.95047, 1.0, 1.08883, epsilon 216/24389, kappa 24389/27).
pub fn lab_from_srgb(rgb: [u8; 3]) -> Lab {
    let [r, g, b] = rgb.map(linear_from_srgb);
    // The sRGB primaries and D65 white expressed in XYZ (IEC 61966-2-1).
    let x = 0.4124564 * r + 0.3575761 * g + 0.1804375 * b;
    let y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b;
    let z = 0.0193339 * r + 0.1191920 * g + 0.9503041 * b;
    let [fx, fy, fz] = [x / WHITE[0], y / WHITE[1], z / WHITE[2]].map(lab_curve);
    Lab { l: (116.0 * fy - 16.0) as f32, a: (500.0 * (fx - fy)) as f32, b: (200.0 * (fy - fz)) as f32 }
}

/// Undoes the sRGB gamma: an 8-bit channel to linear light in 0..1.
fn linear_from_srgb(channel: u8) -> f64 {
    let c = f64::from(channel) / 255.0;
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// The Lab transfer function: a cube root, with a straight line near black where the cube root
/// would be infinitely steep.
fn lab_curve(t: f64) -> f64 {
    if t > EPSILON {
        t.cbrt()
    } else {
        (KAPPA * t + 16.0) / 116.0
    }
}

/// CIEDE2000 colour difference (Sharma, Wu, Dalal 2005), kL = kC = kH = 1.
pub fn delta_e(x: Lab, y: Lab) -> f32 {
    ciede2000(x, y, 1.0)
}

/// CIEDE2000 with lightness counting half (kL = 2, the textile industry's setting): a shaded
/// fold of a red shirt is darker, not another colour. Item colours are compared with wishes by it.
pub fn delta_e_textile(x: Lab, y: Lab) -> f32 {
    ciede2000(x, y, 2.0)
}

fn ciede2000(x: Lab, y: Lab, kl: f64) -> f32 {
    let (l1, a1, b1) = (f64::from(x.l), f64::from(x.a), f64::from(x.b));
    let (l2, a2, b2) = (f64::from(y.l), f64::from(y.a), f64::from(y.b));
    // Greys look greyer than their a* suggests, so a* is stretched for low-chroma pairs (G).
    let c_mean = (a1.hypot(b1) + a2.hypot(b2)) / 2.0;
    let g = 0.5 * (1.0 - chroma_weight(c_mean));
    let (c1, h1) = chroma_hue(a1 * (1.0 + g), b1);
    let (c2, h2) = chroma_hue(a2 * (1.0 + g), b2);

    let dl = l2 - l1;
    let dc = c2 - c1;
    let dh = hue_difference(c1, h1, c2, h2);
    let d_big_h = 2.0 * (c1 * c2).sqrt() * (dh / 2.0).to_radians().sin();

    let l_mean = (l1 + l2) / 2.0;
    let c_mean = (c1 + c2) / 2.0;
    let h_mean = hue_mean(c1, h1, c2, h2);
    // How hue differences are weighted around the circle (T), a sum of four cosines.
    let cos = |factor: f64, offset: f64| (factor * h_mean - offset).to_radians().cos();
    let t = 1.0 - 0.17 * cos(1.0, 30.0) + 0.24 * cos(2.0, 0.0) + 0.32 * cos(3.0, -6.0) - 0.20 * cos(4.0, 63.0);
    let l50 = (l_mean - 50.0).powi(2);
    let sl = 1.0 + 0.015 * l50 / (20.0 + l50).sqrt();
    let sc = 1.0 + 0.045 * c_mean;
    let sh = 1.0 + 0.015 * c_mean * t;
    // Blues are judged on a rotated axis: the rotation term couples chroma and hue there.
    let rotation = 30.0 * (-((h_mean - 275.0) / 25.0).powi(2)).exp();
    let rt = -(2.0 * rotation).to_radians().sin() * 2.0 * chroma_weight(c_mean);

    let (l_term, c_term, h_term) = (dl / (kl * sl), dc / sc, d_big_h / sh);
    (l_term * l_term + c_term * c_term + h_term * h_term + rt * c_term * h_term).sqrt() as f32
}

/// The CIEDE2000 factor sqrt(C^7 / (C^7 + 25^7)): near 0 for greys, near 1 for vivid colours.
fn chroma_weight(chroma: f64) -> f64 {
    let c7 = chroma.powi(7);
    (c7 / (c7 + 25f64.powi(7))).sqrt()
}

/// Chroma and hue angle in degrees (0..360) of a*, b*; the hue of a grey is taken as 0.
fn chroma_hue(a: f64, b: f64) -> (f64, f64) {
    let hue = if a == 0.0 && b == 0.0 { 0.0 } else { b.atan2(a).to_degrees().rem_euclid(360.0) };
    (a.hypot(b), hue)
}

/// The signed hue change from the first colour to the second, the short way round the circle;
/// zero when either is grey, since a grey has no hue to differ in.
fn hue_difference(c1: f64, h1: f64, c2: f64, h2: f64) -> f64 {
    if c1 * c2 == 0.0 {
        return 0.0;
    }
    let d = h2 - h1;
    if d > 180.0 {
        d - 360.0
    } else if d < -180.0 {
        d + 360.0
    } else {
        d
    }
}

/// The mean hue of two colours, taken on the short arc between them; the plain sum when either
/// is grey, as the published formula defines it.
fn hue_mean(c1: f64, h1: f64, c2: f64, h2: f64) -> f64 {
    if c1 * c2 == 0.0 {
        h1 + h2
    } else if (h1 - h2).abs() <= 180.0 {
        (h1 + h2) / 2.0
    } else if h1 + h2 < 360.0 {
        (h1 + h2 + 360.0) / 2.0
    } else {
        (h1 + h2 - 360.0) / 2.0
    }
}

/// One dominant colour of a picture and the share of the item's pixels near it.
/// Serialised compactly as a JSON array [l, a, b, share], values rounded to 2 decimals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f32; 4]", into = "[f32; 4]")]
pub struct Swatch {
    pub lab: Lab,
    pub share: f32,
}

impl From<[f32; 4]> for Swatch {
    fn from([l, a, b, share]: [f32; 4]) -> Swatch {
        Swatch { lab: Lab { l, a, b }, share }
    }
}

impl From<Swatch> for [f32; 4] {
    fn from(swatch: Swatch) -> [f32; 4] {
        [swatch.lab.l, swatch.lab.a, swatch.lab.b, swatch.share].map(round2)
    }
}

/// Two decimals are far finer than anyone can see (a delta E of 0.01) and keep stored signatures
/// short. Adding zero turns a rounded -0.0 into 0.0, so greys do not serialise as "-0.0".
fn round2(value: f32) -> f32 {
    (value * 100.0).round() / 100.0 + 0.0
}

/// The long side, in pixels, a picture is shrunk to before its colours are measured: dominant
/// colours survive the shrinking, and the cost of a signature stays bounded whatever the upload.
const SIGNATURE_SIDE: u32 = 64;
/// How many dominant colours a signature keeps at most: a main colour, a second one, a trim.
const SWATCHES: usize = 3;
/// k-means rounds at most; a few thousand pixels in three groups settle well before this.
const ROUNDS: usize = 10;
/// The share of border pixels that must agree for the border to count as a plain background.
const BACKGROUND_AGREEMENT: f32 = 0.6;
/// How far (delta E) a border pixel may be from the border's median and still agree with it.
const BACKGROUND_SPREAD: f32 = 10.0;
/// How far (delta E) a pixel may be from the background colour and still count as background;
/// a little wider than the spread so that shading in the background goes too.
const BACKGROUND_MARGIN: f32 = 12.0;
/// Below this share of pixels left after the background is removed, the "item" is most likely
/// the same colour as its background (a white shirt on white), so every pixel is measured.
const MIN_ITEM_SHARE: f32 = 0.05;
/// Colour groups smaller than this share of the item are noise, edges or small prints.
const MIN_SWATCH_SHARE: f32 = 0.05;

/// The dominant colours of the item in `image`: at most 3 swatches, shares summing to 1, largest first.
/// An empty image has no colours and gives no swatches.
pub fn signature(image: &RgbImage) -> Vec<Swatch> {
    if image.width() == 0 || image.height() == 0 {
        return Vec::new();
    }
    let small = shrink(image);
    let pixels: Vec<Lab> = small.pixels().map(|p| lab_from_srgb(p.0)).collect();
    let item = item_pixels(&pixels, small.width(), small.height());
    let groups = cluster(&item);
    swatches(&groups)
}

/// The picture at most `SIGNATURE_SIDE` pixels on its long side. `thumbnail` averages the area
/// behind each output pixel, so no colour is skipped the way point sampling would skip it.
fn shrink(image: &RgbImage) -> RgbImage {
    let (width, height) = image.dimensions();
    let long = width.max(height);
    if long <= SIGNATURE_SIDE {
        return image.clone();
    }
    let scale = |side: u32| ((u64::from(side) * u64::from(SIGNATURE_SIDE) + u64::from(long) / 2) / u64::from(long)).max(1) as u32;
    image::imageops::thumbnail(image, scale(width), scale(height))
}

/// The pixels that belong to the item: all of them less the background, when the border shows a
/// plain one. Transparent pixels were flattened onto white by the decoder, so cut-out product shots
/// land in a white background and are left out the same way.
fn item_pixels(pixels: &[Lab], width: u32, height: u32) -> Vec<Lab> {
    let Some(background) = background(pixels, width, height) else {
        return pixels.to_vec();
    };
    let item: Vec<Lab> = pixels.iter().copied().filter(|&p| delta_e(p, background) > BACKGROUND_MARGIN).collect();
    if (item.len() as f32) < MIN_ITEM_SHARE * pixels.len() as f32 {
        pixels.to_vec()
    } else {
        item
    }
}

/// The background colour, when the outermost ring of pixels is mostly one colour. Product photos
/// frame the item on a plain backdrop, so the border is where the backdrop shows; the per-channel
/// median ignores the item where it touches the edge.
fn background(pixels: &[Lab], width: u32, height: u32) -> Option<Lab> {
    let (w, h) = (width as usize, height as usize);
    let border: Vec<Lab> = pixels.iter().enumerate().filter(|(i, _)| i % w == 0 || i % w == w - 1 || i / w == 0 || i / w == h - 1).map(|(_, &p)| p).collect();
    let median = |channel: fn(&Lab) -> f32| {
        let mut values: Vec<f32> = border.iter().map(channel).collect();
        values.sort_by(f32::total_cmp);
        values[values.len() / 2]
    };
    let candidate = Lab { l: median(|p| p.l), a: median(|p| p.a), b: median(|p| p.b) };
    let agreeing = border.iter().filter(|&&p| delta_e(p, candidate) <= BACKGROUND_SPREAD).count();
    (agreeing as f32 >= BACKGROUND_AGREEMENT * border.len() as f32).then_some(candidate)
}

/// Pictures are recoloured at most this many pixels on their long side: the backbones read
/// 224 to 299 pixels, and CIEDE2000 per pixel costs about a microsecond.
const RECOLOUR_SIDE: u32 = 320;
/// Item pixels this bright (a share of the item, by luminance) count as unshaded: the target
/// colour is what they become, darker pixels keep their shading below it.
const HIGHLIGHT_QUANTILE: f32 = 0.9;

/// The picture with its item dyed `target` (sRGB): each item pixel keeps its shading (its
/// luminance over the item's highlights, in linear light) times the target colour; the
/// background stays as it was. "Like this but in red" searches with this picture, so the
/// backbones see the look of the photo in the colour asked for. None when the picture has no
/// plain background to tell the item from (then nothing is recoloured).
pub fn recolour(image: &RgbImage, target: [u8; 3]) -> Option<RgbImage> {
    let (width, height) = image.dimensions();
    let long = width.max(height);
    let small = if long > RECOLOUR_SIDE {
        let scale = |side: u32| ((u64::from(side) * u64::from(RECOLOUR_SIDE)) / u64::from(long)).max(1) as u32;
        image::imageops::thumbnail(image, scale(width), scale(height))
    } else {
        image.clone()
    };
    let labs: Vec<Lab> = small.pixels().map(|p| lab_from_srgb(p.0)).collect();
    let backdrop = background(&labs, small.width(), small.height())?;
    let item: Vec<bool> = labs.iter().map(|&p| delta_e(p, backdrop) > BACKGROUND_MARGIN).collect();
    let luminance = |p: &image::Rgb<u8>| {
        let [r, g, b] = p.0.map(linear_from_srgb);
        0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    };
    let mut lit: Vec<f64> = small.pixels().zip(&item).filter(|(_, &inside)| inside).map(|(p, _)| luminance(p)).collect();
    if (lit.len() as f32) < MIN_ITEM_SHARE * labs.len() as f32 {
        return None;
    }
    lit.sort_by(f64::total_cmp);
    let highlight = lit[((lit.len() - 1) as f32 * HIGHLIGHT_QUANTILE) as usize].max(1e-4);
    let dye = target.map(linear_from_srgb);
    let mut out = small.clone();
    for (pixel, &inside) in out.pixels_mut().zip(&item) {
        if inside {
            let shade = (luminance(pixel) / highlight).min(1.0);
            pixel.0 = dye.map(|c| srgb_from_linear(c * shade));
        }
    }
    Some(out)
}

/// Linear light in 0..1 to an 8-bit sRGB channel.
fn srgb_from_linear(value: f64) -> u8 {
    let v = value.clamp(0.0, 1.0);
    let encoded = if v <= 0.0031308 { 12.92 * v } else { 1.055 * v.powf(1.0 / 2.4) - 0.055 };
    (encoded * 255.0).round() as u8
}

/// sRGB (8-bit) of a CIELAB colour, clamped to the sRGB gamut.
pub fn srgb_from_lab(lab: Lab) -> [u8; 3] {
    let fy = (f64::from(lab.l) + 16.0) / 116.0;
    let (fx, fz) = (fy + f64::from(lab.a) / 500.0, fy - f64::from(lab.b) / 200.0);
    let inverse = |t: f64| if t.powi(3) > EPSILON { t.powi(3) } else { (116.0 * t - 16.0) / KAPPA };
    let (x, y, z) = (inverse(fx) * WHITE[0], inverse(fy) * WHITE[1], inverse(fz) * WHITE[2]);
    let r = 3.2404542 * x - 1.5371385 * y - 0.4985314 * z;
    let g = -0.9692660 * x + 1.8760108 * y + 0.0415560 * z;
    let b = 0.0556434 * x - 0.2040259 * y + 1.0572252 * z;
    [r, g, b].map(srgb_from_linear)
}

/// One colour group found by k-means: its mean colour and how many pixels it holds.
struct Group {
    centre: Lab,
    count: usize,
}

/// k-means with k = `SWATCHES` in Lab. Plain Euclidean distance is used inside the loop: Lab is
/// built to be roughly perceptually even, which is enough to group pixels, and it is far cheaper
/// than CIEDE2000. Seeding is deterministic, so the same picture always gives the same signature.
fn cluster(points: &[Lab]) -> Vec<Group> {
    if points.is_empty() {
        return Vec::new();
    }
    let mut centres = seed(points);
    let mut labels = vec![usize::MAX; points.len()];
    for _ in 0..ROUNDS {
        let mut changed = false;
        for (label, &point) in labels.iter_mut().zip(points) {
            let nearest = nearest(&centres, point);
            changed |= *label != nearest;
            *label = nearest;
        }
        if !changed {
            break;
        }
        centres = means(points, &labels, &centres);
    }
    centres.iter().enumerate().map(|(k, &centre)| Group { centre, count: labels.iter().filter(|&&label| label == k).count() }).collect()
}

/// Farthest-point seeds: first the pixel farthest from the mean colour, then each time the pixel
/// farthest from every seed so far. This finds distinct colours without randomness; it stops early
/// when no pixel differs from the seeds, so a one-colour item gets one group, not three copies.
fn seed(points: &[Lab]) -> Vec<Lab> {
    let mean = mean(points.iter());
    let mut centres = vec![farthest(points, |p| distance2(p, mean)).0];
    while centres.len() < SWATCHES {
        let (point, gap) = farthest(points, |p| centres.iter().map(|&c| distance2(p, c)).fold(f32::INFINITY, f32::min));
        // Half a Lab unit apart is the same colour; seeding it again would only split one colour in two.
        if gap <= 0.25 {
            break;
        }
        centres.push(point);
    }
    centres
}

/// The point with the largest `score`, and that score; the first of equals, so ties are deterministic.
fn farthest(points: &[Lab], score: impl Fn(Lab) -> f32) -> (Lab, f32) {
    points.iter().map(|&p| (p, score(p))).fold((points[0], f32::NEG_INFINITY), |best, next| if next.1 > best.1 { next } else { best })
}

/// The index of the centre nearest `point`.
fn nearest(centres: &[Lab], point: Lab) -> usize {
    let distances = centres.iter().map(|&c| distance2(point, c));
    distances.enumerate().fold((0, f32::INFINITY), |best, (k, d)| if d < best.1 { (k, d) } else { best }).0
}

/// Each group's mean colour; a group left empty keeps its old centre and is dropped later for its zero share.
fn means(points: &[Lab], labels: &[usize], centres: &[Lab]) -> Vec<Lab> {
    (0..centres.len())
        .map(|k| {
            let members: Vec<&Lab> = points.iter().zip(labels).filter(|(_, &label)| label == k).map(|(p, _)| p).collect();
            if members.is_empty() {
                centres[k]
            } else {
                mean(members.into_iter())
            }
        })
        .collect()
}

/// The mean of some colours, summed in f64 so thousands of pixels lose nothing to rounding.
fn mean<'a>(points: impl Iterator<Item = &'a Lab>) -> Lab {
    let (mut sum, mut n) = ([0f64; 3], 0usize);
    for p in points {
        sum[0] += f64::from(p.l);
        sum[1] += f64::from(p.a);
        sum[2] += f64::from(p.b);
        n += 1;
    }
    let n = n.max(1) as f64;
    Lab { l: (sum[0] / n) as f32, a: (sum[1] / n) as f32, b: (sum[2] / n) as f32 }
}

/// Squared Euclidean distance in Lab, the k-means metric.
fn distance2(x: Lab, y: Lab) -> f32 {
    (x.l - y.l).powi(2) + (x.a - y.a).powi(2) + (x.b - y.b).powi(2)
}

/// The groups as swatches: small groups dropped, shares renormalised over what is left, largest
/// first, everything rounded to 2 decimals. Rounding here rather than only when serialising makes a
/// signature read back from storage equal the one computed.
fn swatches(groups: &[Group]) -> Vec<Swatch> {
    let total: usize = groups.iter().map(|g| g.count).sum();
    let kept: Vec<&Group> = groups.iter().filter(|g| g.count > 0 && g.count as f32 >= MIN_SWATCH_SHARE * total as f32).collect();
    let kept_total: usize = kept.iter().map(|g| g.count).sum();
    let mut swatches: Vec<Swatch> = kept.iter().map(|g| Swatch { lab: g.centre, share: g.count as f32 / kept_total as f32 }).collect();
    // A stable sort: equal shares keep the group order, which the deterministic seeding fixes.
    swatches.sort_by(|x, y| y.share.total_cmp(&x.share));
    for swatch in &mut swatches {
        *swatch = Swatch::from(<[f32; 4]>::from(*swatch));
    }
    // Rounded shares can sum to 0.99 or 1.01; the largest swatch takes the difference, so the
    // shares still sum to 1, and the order is restored should that make it smaller than the next.
    if let Some((first, rest)) = swatches.split_first_mut() {
        first.share = round2(1.0 - rest.iter().map(|s| s.share).sum::<f32>());
    }
    swatches.sort_by(|x, y| y.share.total_cmp(&x.share));
    swatches
}

/// One entry of the named-colour table.
pub struct NamedColour {
    pub name: &'static str,
    pub srgb: [u8; 3],
    pub lab: Lab,
}

/// A table entry; the Lab value is written out (from `lab_from_srgb`, to 1 decimal) so that the
/// table is a constant, and a test holds it to the sRGB value.
const fn entry(name: &'static str, srgb: [u8; 3], lab: [f32; 3]) -> NamedColour {
    NamedColour { name, srgb, lab: Lab { l: lab[0], a: lab[1], b: lab[2] } }
}

/// The colours shoppers name, with their sRGB and their CIELAB values written out as literals.
/// The sRGB values are the common web ones, except where the web colour is not what a shopper
/// means by the word: web "lavender" (230,230,250) is nearly white and web "brown" (165,42,42) is
/// a dark red, so lavender is the floral one and brown the colour-wheel one.
pub const NAMED: &[NamedColour] = &[
    entry("red", [255, 0, 0], [53.2, 80.1, 67.2]),
    entry("orange", [255, 165, 0], [74.9, 23.9, 78.9]),
    entry("yellow", [255, 255, 0], [97.1, -21.6, 94.5]),
    entry("green", [0, 128, 0], [46.2, -51.7, 49.9]),
    entry("olive", [128, 128, 0], [51.9, -12.9, 56.7]),
    entry("teal", [0, 128, 128], [48.3, -28.8, -8.5]),
    entry("turquoise", [64, 224, 208], [81.3, -44.1, -4.0]),
    entry("blue", [0, 0, 255], [32.3, 79.2, -107.9]),
    entry("navy", [0, 0, 128], [13.0, 47.5, -64.7]),
    entry("purple", [128, 0, 128], [29.8, 58.9, -36.5]),
    entry("lavender", [181, 126, 220], [61.6, 38.5, -40.0]),
    entry("pink", [255, 192, 203], [83.6, 24.1, 3.3]),
    entry("magenta", [255, 0, 255], [60.3, 98.2, -60.8]),
    entry("burgundy", [128, 0, 32], [25.8, 48.9, 21.3]),
    entry("maroon", [128, 0, 0], [25.5, 48.0, 38.1]),
    entry("brown", [150, 75, 0], [40.4, 27.5, 50.1]),
    entry("tan", [210, 180, 140], [75.0, 5.0, 24.4]),
    entry("beige", [245, 245, 220], [95.9, -4.2, 12.0]),
    entry("khaki", [195, 176, 145], [72.7, 2.0, 18.4]),
    entry("cream", [255, 253, 208], [98.5, -6.5, 21.8]),
    entry("mustard", [225, 173, 1], [73.5, 6.9, 76.3]),
    entry("gold", [255, 215, 0], [86.9, -1.9, 87.1]),
    entry("coral", [255, 127, 80], [67.3, 45.4, 47.5]),
    entry("mint", [152, 255, 152], [91.9, -50.0, 40.0]),
    entry("indigo", [75, 0, 130], [20.5, 51.7, -53.3]),
    entry("white", [255, 255, 255], [100.0, 0.0, 0.0]),
    entry("silver", [192, 192, 192], [77.7, 0.0, 0.0]),
    entry("grey", [128, 128, 128], [53.6, 0.0, 0.0]),
    entry("charcoal", [54, 69, 79], [28.4, -3.3, -8.0]),
    entry("black", [0, 0, 0], [0.0, 0.0, 0.0]),
];

/// Other words for table entries, each mapped to the entry's name.
const SYNONYMS: &[(&str, &str)] = &[("gray", "grey"), ("violet", "purple"), ("fuchsia", "magenta"), ("camel", "tan")];

/// The table entry a word names, ignoring case and surrounding spaces: "navy", "grey" and "gray"
/// alike. None for any other word, plurals included, since colour words are not pluralised in queries.
pub fn named(word: &str) -> Option<&'static NamedColour> {
    let word = word.trim().to_ascii_lowercase();
    let name = SYNONYMS.iter().find(|(synonym, _)| *synonym == word).map_or(word.as_str(), |(_, name)| name);
    NAMED.iter().find(|colour| colour.name == name)
}

/// The table's name for a colour: the entry nearest it by CIEDE2000.
pub fn nearest_named(lab: Lab) -> &'static NamedColour {
    NAMED.iter().min_by(|x, y| delta_e(x.lab, lab).total_cmp(&delta_e(y.lab, lab))).expect("the table is not empty")
}

/// How far "light" and "dark" move lightness, in L units.
const SHADE_STEP: f32 = 20.0;
/// Lightness stays inside this range so that "light white" and "dark black" are still colours.
const SHADE_RANGE: (f32, f32) = (5.0, 98.0);
/// Light versions of a colour are paler as well as lighter ("light blue" is not a vivid blue).
const LIGHT_CHROMA: f32 = 0.8;

/// The same hue lighter ("light blue"): L up by 20, clamped to 5..98, and a*, b* scaled by 0.8.
pub fn lighter(lab: Lab) -> Lab {
    Lab { l: (lab.l + SHADE_STEP).clamp(SHADE_RANGE.0, SHADE_RANGE.1), a: lab.a * LIGHT_CHROMA, b: lab.b * LIGHT_CHROMA }
}

/// The same hue darker ("dark green"): L down by 20, clamped to 5..98, chroma kept.
pub fn darker(lab: Lab) -> Lab {
    Lab { l: (lab.l - SHADE_STEP).clamp(SHADE_RANGE.0, SHADE_RANGE.1), ..lab }
}

/// The width (delta E) of the closeness bell: a swatch this far from the target counts e^-1 ≈ 0.37
/// of its share, twice as far about 0.02. Twenty is around where people stop calling two colours
/// "the same colour" and start calling them "related".
pub const SIGMA: f32 = 20.0;

/// How much of an item is near `target`, between 0 and 1: each swatch's share weighted by a
/// Gaussian of its delta E to the target, so near misses count partly and far colours not at all.
pub fn closeness(signature: &[Swatch], target: Lab) -> f32 {
    let sum: f32 = signature.iter().map(|s| s.share * (-(delta_e_textile(s.lab, target) / SIGMA).powi(2)).exp()).sum();
    sum.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_to_srgb_and_back() {
        for entry in NAMED {
            let back = srgb_from_lab(entry.lab);
            assert!(back.iter().zip(entry.srgb).all(|(a, b)| (i32::from(*a) - i32::from(b)).abs() <= 2), "{}: {back:?} vs {:?}", entry.name, entry.srgb);
        }
    }

    #[test]
    fn recolouring_dyes_the_item_keeps_its_shading_and_the_background() {
        // A shaded blue item (bright left half, dim right half) on white.
        let image = RgbImage::from_fn(40, 40, |x, y| match (10..30).contains(&x) && (10..30).contains(&y) {
            true if x < 20 => image::Rgb([0, 0, 230]),
            true => image::Rgb([0, 0, 110]),
            false => image::Rgb([255, 255, 255]),
        });
        let red = recolour(&image, [230, 0, 0]).expect("a plain background");
        assert_eq!(red.get_pixel(0, 0).0, [255, 255, 255], "the background stays");
        let (bright, dim) = (red.get_pixel(12, 15).0, red.get_pixel(25, 15).0);
        assert!(bright[0] > 200 && bright[2] < 30, "{bright:?}");
        assert!(dim[0] < bright[0] && dim[0] > 60 && dim[2] < 30, "shading kept: {dim:?}");
        let noisy = RgbImage::from_fn(40, 40, |x, y| image::Rgb([(x * 6) as u8, (y * 6) as u8, ((x + y) * 3) as u8]));
        assert!(recolour(&noisy, [230, 0, 0]).is_none(), "no plain background: nothing is recoloured");
    }

    fn lab(l: f32, a: f32, b: f32) -> Lab {
        Lab { l, a, b }
    }

    /// A `width` x `height` picture of `background` with rectangles (x0, y0, x1, y1, colour) painted on it, ends exclusive.
    fn picture(width: u32, height: u32, background: [u8; 3], rectangles: &[(u32, u32, u32, u32, [u8; 3])]) -> RgbImage {
        let mut image = RgbImage::from_pixel(width, height, image::Rgb(background));
        for &(x0, y0, x1, y1, colour) in rectangles {
            for y in y0..y1 {
                for x in x0..x1 {
                    image.put_pixel(x, y, image::Rgb(colour));
                }
            }
        }
        image
    }

    const RED: [u8; 3] = [255, 0, 0];
    const BLUE: [u8; 3] = [0, 0, 255];
    const WHITE_RGB: [u8; 3] = [255, 255, 255];
    const BLACK_RGB: [u8; 3] = [0, 0, 0];

    #[test]
    fn lab_from_srgb_matches_reference_values() {
        let cases = [(WHITE_RGB, lab(100.0, 0.0, 0.0)), (BLACK_RGB, lab(0.0, 0.0, 0.0)), (RED, lab(53.24, 80.09, 67.20))];
        for (rgb, want) in cases {
            let got = lab_from_srgb(rgb);
            for (g, w) in [(got.l, want.l), (got.a, want.a), (got.b, want.b)] {
                assert!((g - w).abs() < 0.05, "{rgb:?}: got {got:?}, want {want:?}");
            }
        }
    }

    /// Sharma, Wu and Dalal (2005), table 1: all 34 pairs (L1, a1, b1, L2, a2, b2, dE00). They
    /// exercise every branch of the formula: hue wrap-around, the mean-hue cases, greys, the blue rotation.
    const SHARMA: [[f32; 7]; 34] = [
        [50.0, 2.6772, -79.7751, 50.0, 0.0, -82.7485, 2.0425],
        [50.0, 3.1571, -77.2803, 50.0, 0.0, -82.7485, 2.8615],
        [50.0, 2.8361, -74.0200, 50.0, 0.0, -82.7485, 3.4412],
        [50.0, -1.3802, -84.2814, 50.0, 0.0, -82.7485, 1.0000],
        [50.0, -1.1848, -84.8006, 50.0, 0.0, -82.7485, 1.0000],
        [50.0, -0.9009, -85.5211, 50.0, 0.0, -82.7485, 1.0000],
        [50.0, 0.0, 0.0, 50.0, -1.0, 2.0, 2.3669],
        [50.0, -1.0, 2.0, 50.0, 0.0, 0.0, 2.3669],
        [50.0, 2.4900, -0.0010, 50.0, -2.4900, 0.0009, 7.1792],
        [50.0, 2.4900, -0.0010, 50.0, -2.4900, 0.0010, 7.1792],
        [50.0, 2.4900, -0.0010, 50.0, -2.4900, 0.0011, 7.2195],
        [50.0, 2.4900, -0.0010, 50.0, -2.4900, 0.0012, 7.2195],
        [50.0, -0.0010, 2.4900, 50.0, 0.0009, -2.4900, 4.8045],
        [50.0, -0.0010, 2.4900, 50.0, 0.0010, -2.4900, 4.8045],
        [50.0, -0.0010, 2.4900, 50.0, 0.0011, -2.4900, 4.7461],
        [50.0, 2.5, 0.0, 50.0, 0.0, -2.5, 4.3065],
        [50.0, 2.5, 0.0, 73.0, 25.0, -18.0, 27.1492],
        [50.0, 2.5, 0.0, 61.0, -5.0, 29.0, 22.8977],
        [50.0, 2.5, 0.0, 56.0, -27.0, -3.0, 31.9030],
        [50.0, 2.5, 0.0, 58.0, 24.0, 15.0, 19.4535],
        [50.0, 2.5, 0.0, 50.0, 3.1736, 0.5854, 1.0000],
        [50.0, 2.5, 0.0, 50.0, 3.2972, 0.0, 1.0000],
        [50.0, 2.5, 0.0, 50.0, 1.8634, 0.5757, 1.0000],
        [50.0, 2.5, 0.0, 50.0, 3.2592, 0.3350, 1.0000],
        [60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644],
        [63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630],
        [61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731],
        [35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645],
        [22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373],
        [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
        [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
        [90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381],
        [6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377],
        [2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082],
    ];

    #[test]
    fn delta_e_matches_sharma_test_data() {
        for (i, [l1, a1, b1, l2, a2, b2, want]) in SHARMA.into_iter().enumerate() {
            let got = delta_e(lab(l1, a1, b1), lab(l2, a2, b2));
            assert!((got - want).abs() < 1e-4, "pair {}: got {got}, want {want}", i + 1);
        }
    }

    #[test]
    fn delta_e_is_symmetric_and_zero_for_the_same_colour() {
        for (i, [l1, a1, b1, l2, a2, b2, _]) in SHARMA.into_iter().enumerate() {
            let (x, y) = (lab(l1, a1, b1), lab(l2, a2, b2));
            assert!((delta_e(x, y) - delta_e(y, x)).abs() < 1e-5, "pair {}", i + 1);
            assert_eq!(delta_e(x, x), 0.0, "pair {}", i + 1);
        }
    }

    #[test]
    fn named_table_lab_values_match_their_srgb() {
        for colour in NAMED {
            let want = lab_from_srgb(colour.srgb);
            for (got, want) in [(colour.lab.l, want.l), (colour.lab.a, want.a), (colour.lab.b, want.b)] {
                assert!((got - want).abs() <= 0.1, "{}: table has {:?}, sRGB gives {want:?}", colour.name, colour.lab);
            }
        }
    }

    #[test]
    fn named_table_holds_the_colours_shoppers_name_once_each() {
        let required =
            "red orange yellow green olive teal turquoise blue navy purple lavender pink burgundy brown beige mustard coral grey white black khaki maroon cream gold silver tan mint charcoal";
        for name in required.split_whitespace() {
            assert_eq!(named(name).map(|c| c.name), Some(name));
        }
        assert!(NAMED.len() >= 28);
        for (i, colour) in NAMED.iter().enumerate() {
            assert!(NAMED[i + 1..].iter().all(|other| other.name != colour.name), "{} is in the table twice", colour.name);
        }
    }

    #[test]
    fn named_finds_words_and_synonyms_only() {
        let cases = [("gray", Some("grey")), ("grey", Some("grey")), ("navy", Some("navy")), ("Navy ", Some("navy")), ("violet", Some("purple")), ("table", None), ("", None), ("reds", None)];
        for (word, want) in cases {
            assert_eq!(named(word).map(|c| c.name), want, "{word:?}");
        }
        assert!(std::ptr::eq(named("gray").unwrap(), named("grey").unwrap()));
    }

    /// The swatches' shares sum to 1, largest first, and there are at most three.
    fn assert_well_formed(swatches: &[Swatch]) {
        assert!(!swatches.is_empty() && swatches.len() <= SWATCHES, "{swatches:?}");
        let total: f32 = swatches.iter().map(|s| s.share).sum();
        assert!((total - 1.0).abs() < 1e-4, "shares sum to {total}: {swatches:?}");
        assert!(swatches.windows(2).all(|w| w[0].share >= w[1].share), "not largest first: {swatches:?}");
    }

    #[test]
    fn signature_of_a_one_colour_item_is_that_colour() {
        let red = lab_from_srgb(RED);
        // 128 pixels shrinks to 64 exactly; 200 x 150 does not, so edges blend with the background.
        let cases = [
            ("red on white", picture(128, 128, WHITE_RGB, &[(32, 32, 96, 96, RED)])),
            ("red on black", picture(128, 128, BLACK_RGB, &[(32, 32, 96, 96, RED)])),
            ("small red on white", picture(40, 30, WHITE_RGB, &[(10, 5, 30, 25, RED)])),
            ("red on white, uneven shrink", picture(200, 150, WHITE_RGB, &[(50, 40, 150, 110, RED)])),
        ];
        for (what, image) in cases {
            let swatches = signature(&image);
            assert_well_formed(&swatches);
            assert_eq!(swatches.len(), 1, "{what}: {swatches:?}");
            assert!(delta_e(swatches[0].lab, red) < 3.0, "{what}: {swatches:?}");
            assert_eq!(swatches[0].share, 1.0, "{what}");
        }
    }

    #[test]
    fn signature_of_a_two_colour_item_splits_it_in_half() {
        let image = picture(128, 128, WHITE_RGB, &[(32, 32, 64, 96, RED), (64, 32, 96, 96, BLUE)]);
        let swatches = signature(&image);
        assert_well_formed(&swatches);
        assert_eq!(swatches.len(), 2, "{swatches:?}");
        for swatch in &swatches {
            assert!((swatch.share - 0.5).abs() < 0.02, "{swatches:?}");
        }
        let near = |rgb| swatches.iter().any(|s| delta_e(s.lab, lab_from_srgb(rgb)) < 3.0);
        assert!(near(RED) && near(BLUE), "{swatches:?}");
    }

    #[test]
    fn signature_of_a_white_item_on_white_is_white() {
        for image in [picture(100, 80, WHITE_RGB, &[]), picture(64, 64, WHITE_RGB, &[(31, 31, 33, 33, [250, 250, 250])])] {
            let swatches = signature(&image);
            assert_well_formed(&swatches);
            assert!(delta_e(swatches[0].lab, lab_from_srgb(WHITE_RGB)) < 3.0, "{swatches:?}");
            assert!(swatches[0].share > 0.9, "{swatches:?}");
        }
    }

    #[test]
    fn signature_keeps_at_most_three_colours_and_drops_specks() {
        let stripes = [(0, RED), (16, BLUE), (32, [0, 160, 0]), (48, [255, 255, 0])];
        let rectangles: Vec<_> = stripes.iter().map(|&(x, colour)| (x, 0, x + 16, 64, colour)).collect();
        assert_well_formed(&signature(&picture(64, 64, WHITE_RGB, &rectangles)));
        // A 2 x 2 blue speck on a red item is under 5% of it, so it is no swatch of its own.
        let speck = signature(&picture(64, 64, WHITE_RGB, &[(16, 16, 48, 48, RED), (30, 30, 32, 32, BLUE)]));
        assert_well_formed(&speck);
        assert!(speck.iter().all(|s| delta_e(s.lab, lab_from_srgb(BLUE)) > 20.0), "{speck:?}");
    }

    #[test]
    fn signature_of_an_empty_image_is_empty() {
        assert!(signature(&RgbImage::new(0, 0)).is_empty());
    }

    #[test]
    fn swatch_serialises_as_a_rounded_array() {
        let swatch = Swatch { lab: lab(53.2408, 80.0925, 67.2032), share: 0.66666 };
        let json = serde_json::to_string(&swatch).unwrap();
        assert_eq!(json, "[53.24,80.09,67.2,0.67]");
        let back: Swatch = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Swatch { lab: lab(53.24, 80.09, 67.2), share: 0.67 });
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let grey = Swatch { lab: lab(53.585, -0.001, 0.0), share: 1.0 };
        assert_eq!(serde_json::to_string(&grey).unwrap(), "[53.59,0.0,0.0,1.0]");
    }

    #[test]
    fn closeness_ranks_targets_by_colour_difference() {
        let item = signature(&picture(64, 64, WHITE_RGB, &[(16, 16, 48, 48, RED)]));
        let to = |name| closeness(&item, named(name).unwrap().lab);
        assert!(to("red") > to("orange") && to("orange") > to("blue"), "red {}, orange {}, blue {}", to("red"), to("orange"), to("blue"));
        assert!(to("red") > 0.95 && to("red") <= 1.0);
        assert_eq!(closeness(&[], named("red").unwrap().lab), 0.0);
    }

    #[test]
    fn lighter_and_darker_move_lightness_within_bounds() {
        let blue = named("blue").unwrap().lab;
        assert!(lighter(blue).l > blue.l && darker(blue).l < blue.l);
        assert_eq!(lighter(blue), lab(blue.l + 20.0, blue.a * 0.8, blue.b * 0.8));
        assert_eq!(darker(blue), lab(blue.l - 20.0, blue.a, blue.b));
        assert_eq!(lighter(named("white").unwrap().lab).l, 98.0);
        assert_eq!(darker(named("black").unwrap().lab).l, 5.0);
    }
}
