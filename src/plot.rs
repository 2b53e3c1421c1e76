//! PNG charts people would rather look at than read: training curves and confusion matrices.
//! Text is drawn with DejaVu Sans (Debian's fonts-dejavu-core), loaded at run time.

use std::path::Path;

use plotters::prelude::*;

use serde::{Deserialize, Serialize};

/// One row of the history: one backbone's head after one epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub backbone: String,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
    /// "heads" (frozen backbone, cached features) or "fine-tune" (top layers trained too).
    #[serde(default)]
    pub phase: String,
}

const FONT_PATHS: [&str; 3] = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONT_PATHS
                .iter()
                .find_map(|path| std::fs::read(path).ok())
                .ok_or_else(|| "no DejaVu Sans font found for chart labels: install Debian's fonts-dejavu-core (`make setup` does)".to_string())?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| "DejaVu Sans could not be read".to_string())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn save(path: &Path, width: u32, height: u32, pixels: Vec<u8>) -> anyhow::Result<()> {
    // Named explicitly: the format should not hang on a file name.
    crate::files::replace_atomically(path, |partial| Ok(image::save_buffer_with_format(partial, &pixels, width, height, image::ColorType::Rgb8, image::ImageFormat::Png)?))
}

const COLOURS: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// Accuracy and loss per epoch, training (dashed) and validation (solid), one colour per
/// backbone: the chapter's figures.
pub fn training_curves(path: &Path, history: &[EpochRecord]) -> anyhow::Result<()> {
    register_font()?;
    let (width, height) = (1200u32, 500u32);
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let panels = root.split_evenly((1, 2));
        let mut backbones: Vec<&str> = history.iter().map(|r| r.backbone.as_str()).collect();
        backbones.sort();
        backbones.dedup();
        let epochs = history.iter().map(|r| r.epoch).max().unwrap_or(1).max(2) as f64;
        let max_loss = history.iter().flat_map(|r| [r.train_loss, r.val_loss]).fold(0.1, f64::max);
        type Pick = fn(&EpochRecord) -> (f64, f64);
        let charts: [(&str, f64, Pick); 2] = [("accuracy", 1.0, |r| (r.train_accuracy, r.val_accuracy)), ("loss", max_loss * 1.05, |r| (r.train_loss, r.val_loss))];
        for (panel, (name, top, pick)) in panels.iter().zip(charts) {
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{name} per epoch (solid: validation, dashed: training)"), ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(50)
                .build_cartesian_2d(1.0..epochs, 0.0..top)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart.configure_mesh().x_desc("epoch").y_desc(name).label_style(("sans-serif", 13)).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
            for (index, backbone) in backbones.iter().enumerate() {
                let colour = COLOURS[index % COLOURS.len()];
                let rows: Vec<&EpochRecord> = history.iter().filter(|r| r.backbone == *backbone).collect();
                chart
                    .draw_series(LineSeries::new(rows.iter().map(|r| (r.epoch as f64, pick(r).1)), colour.stroke_width(2)))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .label(backbone.to_string())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
                chart.draw_series(DashedLineSeries::new(rows.iter().map(|r| (r.epoch as f64, pick(r).0)), 6, 4, colour.stroke_width(1))).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 13)).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    save(path, width, height, pixels)
}

/// A confusion matrix: rows are the true class, columns the prediction, shaded by row share.
pub fn confusion_matrix(path: &Path, title: &str, classes: &[String], counts: &[Vec<usize>]) -> anyhow::Result<()> {
    register_font()?;
    let n = classes.len();
    let cell = 56u32;
    let (left, top) = (130u32, 120u32);
    let (width, height) = (left + cell * n as u32 + 20, top + cell * n as u32 + 20);
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let text = |size: u32| TextStyle::from(("sans-serif", size).into_font()).color(&BLACK);
        root.draw_text(title, &text(18), (12, 12)).map_err(|e| anyhow::anyhow!("{e}"))?;
        root.draw_text("true class (rows) vs predicted (columns)", &text(13), (12, 40)).map_err(|e| anyhow::anyhow!("{e}"))?;
        for (row, counts_row) in counts.iter().enumerate() {
            let total = counts_row.iter().sum::<usize>().max(1) as f64;
            let y = (top + cell * row as u32) as i32;
            root.draw_text(&classes[row], &text(13), (8, y + cell as i32 / 2 - 7)).map_err(|e| anyhow::anyhow!("{e}"))?;
            for (column, count) in counts_row.iter().enumerate() {
                let x = (left + cell * column as u32) as i32;
                let share = *count as f64 / total;
                let shade = (255.0 * (1.0 - share)) as u8;
                let fill = if row == column { RGBColor(shade, 255 - (255 - shade) / 3, shade) } else { RGBColor(255, shade, shade) };
                root.draw(&Rectangle::new([(x, y), (x + cell as i32 - 2, y + cell as i32 - 2)], fill.filled())).map_err(|e| anyhow::anyhow!("{e}"))?;
                root.draw_text(&count.to_string(), &text(13), (x + 8, y + cell as i32 / 2 - 7)).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        for (column, name) in classes.iter().enumerate() {
            let x = (left + cell * column as u32) as i32;
            let short: String = name.chars().take(8).collect();
            root.draw_text(&short, &text(12), (x + 2, top as i32 - 20)).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    save(path, width, height, pixels)
}

/// One row of a contact sheet: the query with its caption, then each hit with its caption.
pub struct SheetRow {
    pub query: image::RgbImage,
    pub caption: Vec<String>,
    pub hits: Vec<(image::RgbImage, Vec<String>)>,
}

/// Pixels a picture is fitted into on a contact sheet.
const THUMB: u32 = 150;

/// A contact sheet: per row, the query (framed) and its hits left to right, each with its
/// caption lines underneath.
pub fn contact_sheet(path: &Path, title: &str, rows: &[SheetRow]) -> anyhow::Result<()> {
    register_font()?;
    let (gap, line) = (14u32, 16u32);
    let lines = rows.iter().flat_map(|r| std::iter::once(r.caption.len()).chain(r.hits.iter().map(|h| h.1.len()))).max().unwrap_or(1) as u32;
    let columns = 1 + rows.iter().map(|r| r.hits.len()).max().unwrap_or(0) as u32;
    let (cell_w, cell_h) = (THUMB + gap, THUMB + lines * line + 2 * gap);
    let top = 40u32;
    let (width, height) = (gap + columns * cell_w + gap, top + cell_h * rows.len().max(1) as u32);
    let mut canvas = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut captions: Vec<(String, i32, i32)> = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let y = top + r as u32 * cell_h;
        let tiles = std::iter::once((&row.query, &row.caption)).chain(row.hits.iter().map(|(image, caption)| (image, caption)));
        for (c, (picture, caption)) in tiles.enumerate() {
            // The query sits apart from its hits by an extra gap.
            let x = gap + c as u32 * cell_w + if c > 0 { gap / 2 } else { 0 };
            let scale = THUMB as f32 / picture.width().max(picture.height()).max(1) as f32;
            let (w, h) = (((picture.width() as f32 * scale) as u32).max(1), ((picture.height() as f32 * scale) as u32).max(1));
            let filter = if scale > 2.0 { image::imageops::FilterType::Nearest } else { image::imageops::FilterType::Triangle };
            let thumb = image::imageops::resize(picture, w, h, filter);
            image::imageops::overlay(&mut canvas, &thumb, (x + (THUMB - w) / 2) as i64, (y + (THUMB - h) / 2) as i64);
            for (n, text) in caption.iter().enumerate() {
                captions.push((text.clone(), x as i32, (y + THUMB + 4 + n as u32 * line) as i32));
            }
        }
    }
    let mut pixels = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let style = |size: u32| TextStyle::from(("sans-serif", size).into_font()).color(&BLACK);
        root.draw_text(title, &style(18), (gap as i32, 10)).map_err(|e| anyhow::anyhow!("{e}"))?;
        for r in 0..rows.len() as u32 {
            let y = (top + r * cell_h) as i32;
            root.draw(&Rectangle::new([(gap as i32 - 3, y - 3), ((gap + THUMB + 2) as i32, y + THUMB as i32 + 2)], COLOURS[0].stroke_width(2))).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for (text, x, y) in &captions {
            let short: String = text.chars().take(24).collect();
            root.draw_text(&short, &style(12), (*x, *y)).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    save(path, width, height, pixels)
}
