//! `--only`: pick a few points of an experiment to run or check, by index and by parameter,
//! e.g. `--only 3,7-9` or `--only kernel=kv_decode,batch=16`. Terms with the same key are
//! alternatives (`batch=1,batch=16`); different keys must all hold. Bare numbers and ranges
//! are point indices (the key `point`). Several `--only` keep the points any of them keeps.

use super::Point;

#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    /// (key, accepted values) in the order the keys first appear.
    terms: Vec<(String, Vec<Accept>)>,
    text: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Accept {
    Value(String),
    Range(usize, usize),
}

/// Keys every point answers besides its kernel's parameters.
const POINT_KEYS: [&str; 4] = ["point", "kernel", "split", "impl"];

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut terms: Vec<(String, Vec<Accept>)> = Vec::new();
        for raw in text.split(',') {
            let term = raw.trim();
            if term.is_empty() {
                return Err(format!("--only {text}: an empty term (two commas?)"));
            }
            let (key, accept) = match term.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                    let (k, v) = (k.trim(), v.trim());
                    let accept = if k == "point" {
                        range(v).ok_or_else(|| format!("--only {text}: point={v} is not an index or a range like 3-7"))?
                    } else {
                        Accept::Value(v.to_string())
                    };
                    (k.to_string(), accept)
                }
                Some(_) => return Err(format!("--only {text}: '{term}' needs a key and a value (key=value)")),
                None => (
                    "point".to_string(),
                    range(term).ok_or_else(|| {
                        format!("--only {text}: '{term}' is neither a point index (3, 7-9) nor key=value")
                    })?,
                ),
            };
            match terms.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(accept),
                None => terms.push((key, vec![accept])),
            }
        }
        Ok(Filter {
            terms,
            text: text.to_string(),
        })
    }

    pub fn matches(&self, p: &Point) -> bool {
        self.terms.iter().all(|(key, accepted)| {
            let value = value_of(p, key);
            accepted.iter().any(|a| match (a, &value) {
                (Accept::Range(lo, hi), _) => (*lo..=*hi).contains(&p.index),
                (Accept::Value(want), Some(have)) => want == have,
                (Accept::Value(_), None) => false,
            })
        })
    }

    /// Keys no point has (typos), named with the keys that exist.
    fn unknown_key(&self, points: &[Point]) -> Result<(), String> {
        for (key, _) in &self.terms {
            if !points.iter().any(|p| value_of(p, key).is_some()) {
                let mut keys: Vec<String> = POINT_KEYS.iter().map(|k| k.to_string()).collect();
                for p in points {
                    if let Some(m) = p.workload.params_json().as_object() {
                        for k in m.keys() {
                            if !keys.contains(k) {
                                keys.push(k.clone());
                            }
                        }
                    }
                }
                return Err(format!(
                    "--only {}: no point has '{key}' (keys: {})",
                    self.text,
                    keys.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The points any of `filters` keeps, or why one is wrong for them: a key no point has (a
/// typo), or nothing kept at all.
pub fn apply(filters: &[Filter], points: Vec<Point>) -> Result<Vec<Point>, String> {
    for f in filters {
        f.unknown_key(&points)?;
    }
    let kept: Vec<Point> = points
        .into_iter()
        .filter(|p| filters.iter().any(|f| f.matches(p)))
        .collect();
    if kept.is_empty() {
        let all: Vec<&str> = filters.iter().map(|f| f.text.as_str()).collect();
        return Err(format!("--only {}: no point matches", all.join(" --only ")));
    }
    Ok(kept)
}

fn range(v: &str) -> Option<Accept> {
    match v.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a <= b).then_some(Accept::Range(a, b))
        }
        None => v.parse().ok().map(|n| Accept::Range(n, n)),
    }
}

/// A point's value for a key, as text (numbers as written in YAML).
fn value_of(p: &Point, key: &str) -> Option<String> {
    match key {
        "point" => Some(p.index.to_string()),
        "kernel" => Some(p.workload.kernel().to_string()),
        "split" => Some(p.split.name().to_string()),
        "impl" => Some(p.imp.unwrap_or("best").to_string()),
        k => match p.workload.params_json().get(k)? {
            serde_json::Value::String(s) => Some(s.clone()),
            v => Some(v.to_string()),
        },
    }
}
