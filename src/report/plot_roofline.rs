//! The roofline chart of a run: per backend device, the two ceilings this run measured
//! (stream read in GB/s, the compute ceiling in GFLOP/s) as one bent line, and every decode
//! point at its FLOP per byte and the GFLOP/s it reached. A point on the slope is held by
//! memory, one under the flat part by compute; the distance below the line is what is left.

use super::ResultLine;
use super::format::{sig, tick};
use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

/// One device's roof and the points that ran on it.
pub struct Roof {
    /// `cpu:0`.
    pub device: String,
    pub stream_gbps: f64,
    pub peak_gflops: f64,
    /// What measured the compute ceiling.
    pub peak: String,
    /// (label, implementation, FLOP per byte, GFLOP/s reached).
    pub points: Vec<(String, String, f64, f64)>,
}

/// The roofs of a run: one per backend device and compute unit (a CPU's FMA lanes and its
/// AMX tiles have ceilings of their own) whose decode points carry both ceilings.
pub fn roofs(lines: &[ResultLine]) -> Vec<Roof> {
    let mut out: Vec<Roof> = Vec::new();
    for l in lines.iter().filter(|l| l.check.pass && l.split == "none") {
        let Some(r) = l.roofline.as_ref() else {
            continue;
        };
        let (Some(g), Some(p)) = (r.stream_gbps, r.peak_gflops) else {
            continue;
        };
        let device = format!("{}:{}", l.backend, l.key().2);
        let i = match out
            .iter()
            .position(|x| x.device == device && x.peak == r.peak)
        {
            Some(i) => i,
            None => {
                out.push(Roof {
                    device,
                    stream_gbps: g,
                    peak_gflops: p,
                    peak: r.peak.clone(),
                    points: Vec::new(),
                });
                out.len() - 1
            }
        };
        let roof = &mut out[i];
        // The run's best stream read: later lines know at least what earlier ones did.
        roof.stream_gbps = roof.stream_gbps.max(g);
        let label = format!("{} {}", l.point, super::params_label(&l.kernel, &l.params));
        let gflops = l.flops as f64 / l.time_s.median / 1e9;
        roof.points
            .push((label, l.implementation.clone(), r.flop_per_byte, gflops));
    }
    out
}

/// Draw one roof: log-log, FLOP per byte against GFLOP/s, a colour per implementation.
pub fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &Roof) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    area.fill(&WHITE).map_err(e)?;
    let ridge = r.peak_gflops / r.stream_gbps;
    let xs = r.points.iter().map(|p| p.2).chain([ridge]);
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = (x0 / 4.0, x1 * 4.0);
    let ys = r.points.iter().map(|p| p.3).chain([r.stream_gbps * x0]);
    let y0 = ys.fold(f64::MAX, f64::min) / 2.0;
    let y1 = r.peak_gflops * 2.0;
    let title = format!(
        "{}: roofline (stream read {} GB/s, {} GFLOP/s of {})",
        r.device,
        sig(r.stream_gbps, 3),
        sig(r.peak_gflops, 3),
        r.peak.split(',').next().unwrap_or_default()
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(72)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("FLOP per byte (of the byte table)")
        .y_desc("GFLOP/s")
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    let roof = [
        (x0, r.stream_gbps * x0),
        (ridge, r.peak_gflops),
        (x1, r.peak_gflops),
    ];
    chart
        .draw_series(LineSeries::new(roof, BLACK.stroke_width(2)))
        .map_err(e)?
        .label(format!("roof: min(stream x F/B, {})", r.peak))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK.stroke_width(2)));
    let mut impls: Vec<&str> = r.points.iter().map(|p| p.1.as_str()).collect();
    impls.sort();
    impls.dedup();
    for (k, imp) in impls.iter().enumerate() {
        let c = super::style::colour(k);
        chart
            .draw_series(
                r.points
                    .iter()
                    .filter(|p| p.1 == *imp)
                    .map(|p| Circle::new((p.2, p.3), 4, c.filled())),
            )
            .map_err(e)?
            .label(*imp)
            .legend(move |(x, y)| Circle::new((x + 7, y), 4, c.filled()));
    }
    super::style::legend_and_present(&mut chart, area, SeriesLabelPosition::LowerRight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_without_both_ceilings_draws_no_roof() {
        let text = r#"{"schema":"decodelab.result/1","experiment":"m","point":3,"kernel":"kv_decode","backend":"cpu","device":"x","device_count":1,"split":"none","params":{"attention":"gqa"},"bytes":100,"flops":800,"reps":1,"time_s":{"median":1e-6,"min":1e-6,"max":1e-6},"gbps":0.1,"pct_of_spec":null,"pct_of_stream":null,"cache":"cold","energy":{"source":"none","joules":null,"pj_per_byte":null},"check":{"rel_l2_err":0,"max_abs_err":0,"pass":true},"env":{}}"#;
        let mut l: ResultLine = serde_json::from_str(text).unwrap();
        assert!(roofs(std::slice::from_ref(&l)).is_empty());
        l.roofline = Some(super::super::Roofline::of(
            800,
            100,
            1e-6,
            Some(10.0),
            &Ok(crate::backend::Peak {
                gflops: 100.0,
                unit: "t".into(),
            }),
        ));
        let r = roofs(&[l]);
        assert_eq!(r.len(), 1);
        // 800 FLOP in a microsecond is 0.8 GFLOP/s, at 8 FLOP per byte.
        assert_eq!(r[0].points[0].2, 8.0);
        assert!((r[0].points[0].3 - 0.8).abs() < 1e-12);
    }
}
