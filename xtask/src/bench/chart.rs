//! The PNG chart of throughput per tool: a row of panels per variant, a panel per data set.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::run;

/// A TTF that Debian's fonts-dejavu-core installs; plotters' ab_glyph
/// renderer draws text from it without fontconfig or freetype.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

#[derive(Debug, Clone)]
pub struct Bar {
    pub label: &'static str,
    /// Index into the palette: the same tool has the same colour everywhere.
    pub colour: usize,
    pub mb_per_sec: f64,
    /// Printed above the bar after the figure, such as "capped".
    pub note: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// One colour per tool, the same in every panel: realize's rows in blues,
/// rsync's in oranges and reds, rclone green, cp grey.
const COLOURS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x6b, 0xae, 0xd6),
    RGBColor(0x9e, 0xca, 0xe1),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
];

fn load_font() -> anyhow::Result<()> {
    if !Path::new(FONT).exists() {
        run("apt-get", &["install", "-y", "-qq", "fonts-dejavu-core"])?;
    }
    let bytes = std::fs::read(FONT).with_context(|| format!("cannot read {FONT}"))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can read"))
}

pub fn draw(path: &Path, title: &str, rows: &[Vec<Panel>]) -> anyhow::Result<()> {
    load_font()?;
    let columns = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let height = 60 + 420 * rows.len().max(1) as u32;
    let root = BitMapBackend::new(path, (1500, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let areas = root.split_evenly((rows.len().max(1), columns));
    let panels = rows.iter().enumerate().flat_map(|(r, row)| {
        row.iter()
            .enumerate()
            .map(move |(c, p)| (r * columns + c, p))
    });
    for (index, panel) in panels {
        let area = &areas[index];
        let top = panel.bars.iter().map(|b| b.mb_per_sec).fold(1.0, f64::max) * 1.18;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            // A segmented range has one segment per value, the last included.
            .build_cartesian_2d(
                (0..panel.bars.len().saturating_sub(1)).into_segmented(),
                0.0..top,
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("MB/s (median)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => panel
                    .bars
                    .get(*i)
                    .map_or_else(String::new, |b| b.label.to_string()),
                _ => String::new(),
            })
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(
            Histogram::vertical(&chart)
                .margin(8)
                .style_func(|x, _| match x {
                    SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => {
                        let colour = panel.bars.get(*i).map_or(0, |b| b.colour);
                        COLOURS[colour % COLOURS.len()].filled()
                    }
                    SegmentValue::Last => BLACK.filled(),
                })
                .data(
                    panel
                        .bars
                        .iter()
                        .enumerate()
                        .map(|(i, b)| (i, b.mb_per_sec)),
                ),
        )?;
        chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
            let figure = if b.mb_per_sec < 10.0 {
                format!("{:.2}", b.mb_per_sec)
            } else {
                format!("{:.0}", b.mb_per_sec)
            };
            let label = match b.note {
                Some(note) => format!("{figure} ({note})"),
                None => figure,
            };
            Text::new(
                label,
                (SegmentValue::CenterOf(i), b.mb_per_sec + top * 0.02),
                ("sans-serif", 12)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}
