//! Peak memory of one query's image work (decode, then the three backbones' preprocessing) for
//! the shapes a hostile or careless user can send: it must stay a few hundred MB above the idle
//! process whatever the shape. One test in its own process, so that nothing else moves the peak.

use image::{DynamicImage, RgbImage};
use lookalike::config::Profile;
use lookalike::imaging::{self, ImageLimits};
use lookalike::vision;

/// Peak resident memory of this process so far, in MB (Linux).
fn peak_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

fn resident_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8]));
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

#[test]
fn no_accepted_shape_costs_more_than_a_few_hundred_mb() {
    let limits = ImageLimits { max_bytes: 64 << 20, max_pixels: 40_000_000 };
    let specs: Vec<_> = [Profile::Kit, Profile::Chapter].into_iter().flat_map(vision::backbones).collect();
    // Warm libtorch up, so that its one-time allocations do not count against a shape.
    for spec in &specs {
        let _ = spec.preprocess.batch(&[RgbImage::new(300, 200)], tch::Device::Cpu);
    }
    // Strips (each pixel scaled up 256 to 342 times), a 36-megapixel photo, a 40-megapixel strip.
    for (width, height) in [(1, 10_000), (10_000, 1), (2, 2_000), (6_000, 6_000), (40_000, 1_000)] {
        let bytes = png(width, height);
        let _ = std::fs::write("/proc/self/clear_refs", "5"); // resets VmHWM to the current VmRSS
        let idle = resident_mb();
        let image = imaging::decode(&bytes, limits).unwrap();
        for spec in &specs {
            let tensor = spec.preprocess.batch(std::slice::from_ref(&image), tch::Device::Cpu);
            assert_eq!(tensor.size(), [1, 3, spec.preprocess.crop as i64, spec.preprocess.crop as i64]);
        }
        let above_idle = peak_mb() - idle;
        eprintln!("{width} x {height}: peak {above_idle:.0} MB above idle");
        assert!(above_idle < 400.0, "{width} x {height} pixels took {above_idle:.0} MB above the idle process");
    }
}
