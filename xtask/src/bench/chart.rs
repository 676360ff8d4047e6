//! The PNG chart of throughput per tool and data set.

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
    pub tool: &'static str,
    pub mb_per_sec: f64,
    /// Printed above the bar after the figure, such as "capped".
    pub note: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// One colour per tool, the same in every panel.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
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

pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    load_font()?;
    let root = BitMapBackend::new(path, (1260, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        let top = panel.bars.iter().map(|b| b.mb_per_sec).fold(1.0, f64::max) * 1.18;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 17))
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
                    .map_or_else(String::new, |b| b.tool.to_string()),
                _ => String::new(),
            })
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(
            Histogram::vertical(&chart)
                .margin(14)
                .style_func(|x, _| match x {
                    SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => {
                        COLOURS[*i % COLOURS.len()].filled()
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
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}
