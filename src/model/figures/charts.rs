//! Drawing the figures (plotters): stacked and grouped bars, lines on a log x axis, two
//! panels side by side. Bars carry their values where a bar is too small to see; axis ticks
//! are written without trailing zeros, and log axes label only 1, 2 and 5 x 10^k so that the
//! labels never run into each other; bar labels take two lines.

use crate::report::format::tick;
use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Pixels left of a horizontal bar chart for its labels.
const LABEL_AREA: u32 = 360;

/// What a figure draws.
pub enum Plot {
    /// Labelled bars, each a stack of (series, value).
    Stacked {
        bars: Vec<(String, Vec<f64>)>,
        series: Vec<&'static str>,
        y_label: String,
        /// Write each bar's total above it, with this unit (always for bars too small to see).
        unit: &'static str,
    },
    /// Groups of bars side by side: one bar per series in each group, optionally on a log y.
    Grouped {
        groups: Vec<String>,
        /// (series label, one value per group).
        series: Vec<(String, Vec<f64>)>,
        y_label: String,
        unit: &'static str,
        log_y: bool,
    },
    /// Points on a log x axis: series (drawn as lines or as points), a frontier drawn
    /// through labelled points, and marked points with labels.
    Lines {
        series: Vec<Series>,
        frontier: Vec<(String, (f64, f64))>,
        marks: Vec<(String, (f64, f64))>,
        x_label: String,
        y_label: String,
    },
    /// Two panels side by side.
    Pair(Box<Plot>, Box<Plot>),
    /// A horizontal reference level over bars: (bars, level label, level).
    BarsWithLevel {
        bars: Vec<(String, f64)>,
        y_label: String,
        level: (String, f64),
    },
    Nothing,
}

impl Plot {
    /// Pixels the figure needs: taller for many horizontal bars.
    pub fn size(&self) -> (u32, u32) {
        match self {
            Plot::BarsWithLevel { bars, .. } => (1000, (130 + 22 * bars.len() as u32).max(560)),
            _ => (1000, 560),
        }
    }
}

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Joined by a line (else points only).
    pub line: bool,
}

/// The house colours (report/style.rs), six of them: the figures' series cycle sooner.
pub fn colour(i: usize) -> RGBColor {
    crate::report::style::colour(i % 6)
}

/// Labels of a log axis: 1, 2 and 5 times a power of ten, the others left blank.
fn log_tick(x: f64) -> String {
    let lead = x / 10f64.powf(x.log10().floor());
    if [1.0, 2.0, 5.0].iter().any(|l| (lead - l).abs() < 1e-6) {
        tick(x)
    } else {
        String::new()
    }
}

/// A bar label on at most two lines: split at the space nearest its middle.
fn two_lines(label: &str) -> Vec<String> {
    if label.len() <= 14 {
        return vec![label.to_string()];
    }
    let mid = label.len() / 2;
    let cut = label
        .char_indices()
        .filter(|(_, c)| *c == ' ')
        .min_by_key(|(i, _)| i.abs_diff(mid))
        .map(|(i, _)| i);
    match cut {
        Some(i) => vec![label[..i].to_string(), label[i + 1..].to_string()],
        None => vec![label.to_string()],
    }
}

type DrawResult = anyhow::Result<()>;

pub fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    plot: &Plot,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    area.fill(&WHITE).map_err(e)?;
    match plot {
        Plot::Nothing => {
            area.draw(&Text::new(
                format!("{title}: no data"),
                (20, 40),
                ("sans-serif", 20),
            ))
            .map_err(e)?;
        }
        Plot::Pair(a, b) => {
            let titled = area.titled(title, ("sans-serif", 22)).map_err(e)?;
            let (l, r) = titled.split_horizontally(titled.dim_in_pixel().0 / 2);
            draw(&l, "", a)?;
            draw(&r, "", b)?;
        }
        Plot::Stacked { .. } => stacked(area, title, plot)?,
        Plot::Grouped { .. } => grouped(area, title, plot)?,
        Plot::BarsWithLevel { .. } => bars_with_level(area, title, plot)?,
        Plot::Lines { .. } => lines(area, title, plot)?,
    }
    area.present().map_err(e)?;
    Ok(())
}

fn stacked<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    plot: &Plot,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    let Plot::Stacked {
        bars,
        series,
        y_label,
        unit,
    } = plot
    else {
        unreachable!("dispatched by kind")
    };

    let totals: Vec<f64> = bars.iter().map(|(_, v)| v.iter().sum()).collect();
    let max = totals.iter().copied().fold(0.0, f64::max).max(1e-12) * 1.15;
    let n = bars.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..max)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|y| tick(*y))
        .y_desc(y_label.as_str())
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (si, name) in series.iter().enumerate() {
        let rects: Vec<Rectangle<(f64, f64)>> = bars
            .iter()
            .enumerate()
            .map(|(i, (_, v))| {
                let base: f64 = v[..si.min(v.len())].iter().sum();
                let top = base + v.get(si).copied().unwrap_or(0.0);
                Rectangle::new(
                    [(i as f64 - 0.35, base), (i as f64 + 0.35, top)],
                    colour(si).filled(),
                )
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(e)?
            .label(*name)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour(si).filled())
            });
    }
    // Every bar's value above it: the small ones would otherwise be invisible.
    let centred = ("sans-serif", 14)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(totals.iter().enumerate().map(|(i, &t)| {
            Text::new(
                format!("{}{unit}", tick(t)),
                (i as f64, t + max * 0.01),
                centred.clone(),
            )
        }))
        .map_err(e)?;
    bar_labels(area, &chart, bars.iter().map(|(l, _)| l.as_str()))?;
    if series.len() > 1 {
        legend(&mut chart, e)?;
    }
    Ok(())
}

fn grouped<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    plot: &Plot,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    let Plot::Grouped {
        groups,
        series,
        y_label,
        unit,
        log_y,
    } = plot
    else {
        unreachable!("dispatched by kind")
    };

    let values = series.iter().flat_map(|(_, v)| v.iter().copied());
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let hi = hi.max(1e-12);
    let n = groups.len();
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    let mut cb = ChartBuilder::on(area);
    cb.caption(
        title,
        ("sans-serif", if title.len() > 40 { 18 } else { 22 }),
    )
    .margin(12)
    .x_label_area_size(48)
    .y_label_area_size(70);
    let centred = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    macro_rules! grouped {
        ($chart:ident, $floor:expr) => {{
            $chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_label_formatter(&|y| if *log_y { log_tick(*y) } else { tick(*y) })
                .y_desc(y_label.as_str())
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(e)?;
            for (si, (name, v)) in series.iter().enumerate() {
                let x0 = |g: usize| g as f64 - 0.4 + si as f64 * width;
                $chart
                    .draw_series(
                        v.iter()
                            .enumerate()
                            .filter(|(_, y)| **y > 0.0)
                            .map(|(g, &y)| {
                                Rectangle::new(
                                    [(x0(g), $floor), (x0(g) + width * 0.9, y)],
                                    colour(si).filled(),
                                )
                            }),
                    )
                    .map_err(e)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour(si).filled())
                    });
                // Neighbouring series' values alternate in height, so equal bars'
                // labels do not run into each other.
                let dy = -3 - 14 * (si as i32 % 2);
                $chart
                    .draw_series(v.iter().enumerate().map(|(g, &y)| {
                        let at = if y > 0.0 { y } else { $floor };
                        EmptyElement::at((x0(g) + width * 0.45, at))
                            + Text::new(format!("{}{unit}", tick(y)), (0, dy), centred.clone())
                    }))
                    .map_err(e)?;
            }
            bar_labels(area, &$chart, groups.iter().map(String::as_str))?;
            legend(&mut $chart, e)?;
        }};
    }
    if *log_y {
        let floor = lo / 3.0;
        let mut chart = cb
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (floor..hi * 8.0).log_scale())
            .map_err(e)?;
        grouped!(chart, floor);
    } else {
        let mut chart = cb
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..hi * 1.25)
            .map_err(e)?;
        grouped!(chart, 0.0);
    }
    Ok(())
}

fn bars_with_level<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    plot: &Plot,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    let Plot::BarsWithLevel {
        bars,
        y_label,
        level,
    } = plot
    else {
        unreachable!("dispatched by kind")
    };

    // Horizontal bars: each label gets a line of its own, however many there are.
    let max = bars.iter().map(|b| b.1).fold(level.1, f64::max).max(1e-12) * 1.1;
    let n = bars.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(LABEL_AREA)
        .build_cartesian_2d(0.0..max, (n as f64 - 0.5)..-0.5f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|x| tick(*x))
        .x_desc(y_label.as_str())
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [(0.0, i as f64 - 0.35), (*v, i as f64 + 0.35)],
                colour(0).filled(),
            )
        }))
        .map_err(e)?
        .label("measured")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour(0).filled()));
    let left = ("sans-serif", 12)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            EmptyElement::at((*v, i as f64)) + Text::new(tick(*v), (4, 0), left.clone())
        }))
        .map_err(e)?;
    let line = RED.stroke_width(2);
    chart
        .draw_series(LineSeries::new(
            [(level.1, -0.5), (level.1, n as f64 - 0.5)],
            line,
        ))
        .map_err(e)?
        .label(format!("{} ({} GB/s)", level.0, tick(level.1)))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], line));
    let (bx, by) = area.get_base_pixel();
    let plot_left = chart.plotting_area().get_pixel_range().0.start;
    let right = ("sans-serif", 12)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (i, (label, _)) in bars.iter().enumerate() {
        let (_, py) = chart.backend_coord(&(0.0, i as f64));
        area.draw(&Text::new(
            label.clone(),
            (plot_left - bx - 6, py - by),
            right.clone(),
        ))
        .map_err(e)?;
    }
    legend(&mut chart, e)?;
    Ok(())
}

/// A line chart: series, the Pareto frontier and marked points. (Over 100 lines on purpose:
/// every part draws in the one chart's coordinates, set up at the top.)
fn lines<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, plot: &Plot) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    let Plot::Lines {
        series,
        frontier,
        marks,
        x_label,
        y_label,
    } = plot
    else {
        unreachable!("dispatched by kind")
    };

    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .chain(marks.iter().map(|(_, p)| p))
        .chain(frontier.iter().map(|(_, p)| p));
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let y1 = y1 * 1.15 + 1e-12;
    let (xa, xb) = (x0 * 0.8, x1 * 1.25);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xa..xb).log_scale(), 0.0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_label.as_str())
        .y_desc(y_label.as_str())
        .x_labels(30) // ask for every 1..9 x 10^k; log_tick keeps 1, 2 and 5
        .x_label_formatter(&|x| log_tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (i, s) in series.iter().enumerate() {
        if s.line {
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    colour(i).stroke_width(2),
                ))
                .map_err(e)?;
        }
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&q| Circle::new(q, 4, colour(i).filled())),
            )
            .map_err(e)?
            .label(s.label.as_str())
            .legend(move |(x, y)| Circle::new((x + 7, y), 4, colour(i).filled()));
    }
    // Labels in the right half of the plot go to the left of their point.
    let span = xb.ln() - xa.ln();
    let offset = |q: (f64, f64), len: usize, dy: i32| {
        let right = q.0.ln() - xa.ln() > 0.5 * span;
        (if right { -(len as i32) * 7 - 10 } else { 8 }, dy)
    };
    if !frontier.is_empty() {
        let line = BLACK.stroke_width(1);
        chart
            .draw_series(LineSeries::new(frontier.iter().map(|f| f.1), line))
            .map_err(e)?
            .label("Pareto frontier")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], line));
        // Neighbours alternate above and below the line, so close ones stay apart.
        chart
            .draw_series(
                frontier
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, q))| {
                        // A marked point carries its own label.
                        !marks.iter().any(|(_, m)| m == q)
                    })
                    .map(|(i, (label, q))| {
                        let dy = if i % 2 == 0 { -16 } else { 5 };
                        EmptyElement::at(*q)
                            + Text::new(
                                label.clone(),
                                offset(*q, label.len(), dy),
                                ("sans-serif", 12),
                            )
                    }),
            )
            .map_err(e)?;
    }
    for (label, q) in marks {
        chart
            .draw_series([Circle::new(*q, 8, BLACK.stroke_width(2))])
            .map_err(e)?;
        chart
            .draw_series([EmptyElement::at(*q)
                + Text::new(
                    label.clone(),
                    offset(*q, label.len(), -36),
                    ("sans-serif", 15),
                )])
            .map_err(e)?;
    }
    legend(&mut chart, e)?;
    Ok(())
}

/// The series legend, where it covers the least: the upper right.
fn legend<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    e: impl Fn(DrawingAreaErrorKind<DB::ErrorType>) -> anyhow::Error,
) -> DrawResult
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)
}

/// Each bar's label under its position on the x axis, on up to two lines (plotters' own
/// labels take one line, and long ones run into their neighbours).
fn bar_labels<'a, 'b, DB: DrawingBackend + 'a, Y>(
    area: &DrawingArea<DB, Shift>,
    chart: &ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    labels: impl Iterator<Item = &'b str>,
) -> DrawResult
where
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    let (bx, by) = area.get_base_pixel();
    let bottom = chart.plotting_area().get_pixel_range().1.end;
    let style = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, label) in labels.enumerate() {
        let (px, _) = chart.backend_coord(&(i as f64, chart.y_range().start));
        for (row, line) in two_lines(label).iter().enumerate() {
            area.draw(&Text::new(
                line.clone(),
                (px - bx, bottom - by + 6 + 16 * row as i32),
                style.clone(),
            ))
            .map_err(e)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_that_do_not_collide() {
        assert_eq!(log_tick(600.0), "");
        assert_eq!(log_tick(500.0), "500");
        assert_eq!(log_tick(1000.0), "1000");
        assert_eq!(log_tick(0.2), "0.2");
        assert_eq!(
            two_lines("Qwen3-235B B64 H200x4"),
            ["Qwen3-235B", "B64 H200x4"]
        );
        assert_eq!(two_lines("weights"), ["weights"]);
    }
}
