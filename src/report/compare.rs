//! `decodelab compare A B`: two runs point by point. Points are matched by kernel,
//! parameters, backend, implementation, split and device; each pair shows GB/s, time and
//! pJ/B of both and the change, and a slowdown beyond both the threshold and the two medians'
//! noise is a regression (the exit code says so, for CI).

use super::format::{micros, params_label, sig};
use super::{ResultLine, load_lines};
use std::path::Path;

/// One matched pair.
pub struct Pair<'a> {
    pub a: &'a ResultLine,
    pub b: &'a ResultLine,
    /// (B's GB/s - A's) / A's.
    pub change: f64,
    /// The change is larger than the two medians' 95 % intervals together.
    pub beyond_noise: bool,
    /// Slower by more than the threshold and beyond noise.
    pub regression: bool,
}

pub struct Comparison<'a> {
    pub pairs: Vec<Pair<'a>>,
    pub only_a: Vec<&'a ResultLine>,
    pub only_b: Vec<&'a ResultLine>,
}

impl Comparison<'_> {
    pub fn regressions(&self) -> usize {
        self.pairs.iter().filter(|p| p.regression).count()
    }
}

/// What matches a point across runs (not its index: files may differ).
fn key(l: &ResultLine) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}",
        l.kernel,
        serde_json::to_string(&l.params).unwrap_or_default(),
        l.backend,
        l.implementation,
        l.split,
        l.key().2
    )
}

/// Match `b` against `a`; `threshold` is the fraction (0.05: 5 %) a slowdown must pass.
pub fn compare<'a>(a: &'a [ResultLine], b: &'a [ResultLine], threshold: f64) -> Comparison<'a> {
    let mut pairs = Vec::new();
    let mut only_a = Vec::new();
    for la in a {
        match b.iter().find(|lb| key(lb) == key(la)) {
            Some(lb) => {
                let change = if la.gbps > 0.0 {
                    (lb.gbps - la.gbps) / la.gbps
                } else {
                    0.0
                };
                // No interval (fewer than 5 reps): the threshold alone decides.
                let noise = la.time_s.ci95.unwrap_or(0.0) + lb.time_s.ci95.unwrap_or(0.0);
                let beyond_noise = change.abs() > noise;
                pairs.push(Pair {
                    a: la,
                    b: lb,
                    change,
                    beyond_noise,
                    regression: change < -threshold && beyond_noise,
                });
            }
            None => only_a.push(la),
        }
    }
    let only_b = b
        .iter()
        .filter(|lb| !a.iter().any(|la| key(la) == key(lb)))
        .collect();
    Comparison {
        pairs,
        only_a,
        only_b,
    }
}

/// The comparison as a table, then what did not match.
pub fn render(c: &Comparison, threshold: f64) -> String {
    let header: Vec<String> = [
        "kernel", "params", "backend", "impl", "A GB/s", "B GB/s", "change", "A us", "B us",
        "A pJ/B", "B pJ/B", "",
    ]
    .map(String::from)
    .to_vec();
    let pj = |l: &ResultLine| l.energy.pj_per_byte.map_or("-".into(), |p| sig(p, 3));
    let rows: Vec<Vec<String>> = c
        .pairs
        .iter()
        .map(|p| {
            vec![
                p.a.kernel.clone(),
                params_label(&p.a.kernel, &p.a.params),
                format!("{}:{}", p.a.backend, p.a.key().2),
                p.a.implementation.clone(),
                sig(p.a.gbps, 3),
                sig(p.b.gbps, 3),
                format!("{:+.1} %", 100.0 * p.change),
                micros(p.a.time_s.median),
                micros(p.b.time_s.median),
                pj(p.a),
                pj(p.b),
                if p.regression {
                    "REGRESSION".into()
                } else if !p.beyond_noise {
                    "~ (within noise)".into()
                } else if p.change > threshold {
                    "faster".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let mut out = super::table::format_columns(&header, &rows);
    for (side, v) in [("A", &c.only_a), ("B", &c.only_b)] {
        if !v.is_empty() {
            let names: Vec<String> = v
                .iter()
                .map(|l| format!("{} {}", l.kernel, params_label(&l.kernel, &l.params)))
                .collect();
            out.push_str(&format!(
                "only in {side} ({}): {}\n",
                v.len(),
                names.join("; ")
            ));
        }
    }
    out.push_str(&format!(
        "{} matched, {} regression(s) (slower by over {:.1} % and beyond the medians' noise)\n",
        c.pairs.len(),
        c.regressions(),
        100.0 * threshold
    ));
    out
}

/// `decodelab compare`: the table, and whether anything regressed.
pub fn run(a: &Path, b: &Path, threshold_pct: f64) -> anyhow::Result<(String, usize)> {
    anyhow::ensure!(
        threshold_pct.is_finite() && threshold_pct >= 0.0,
        "--threshold {threshold_pct}: a percentage, 0 or more"
    );
    let (la, lb) = (load_lines(a)?, load_lines(b)?);
    let c = compare(&la, &lb, threshold_pct / 100.0);
    anyhow::ensure!(
        !c.pairs.is_empty(),
        "no point of {} matches one of {} (kernel, parameters, backend, implementation, split and device must agree)",
        a.display(),
        b.display()
    );
    Ok((render(&c, threshold_pct / 100.0), c.regressions()))
}
