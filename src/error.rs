//! Refusals of an experiment file: always file, line and field, never a panic.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: u64,
    pub column: u64,
    /// The YAML field at fault (e.g. `runs[1].kv_heads`), when one is.
    pub field: Option<String>,
    pub message: String,
    /// The offending source line, shown under the message.
    pub source_line: Option<String>,
}

impl ConfigError {
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: 0,
            column: 0,
            field: None,
            message: message.into(),
            source_line: None,
        }
    }

    /// An error at a line of `source`, naming `field`.
    pub fn at(
        file: &str,
        source: &str,
        line: u64,
        column: u64,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            line,
            column,
            field: Some(field.into()),
            message: message.into(),
            source_line: source_line(source, line),
        }
    }

    /// Wrap a YAML/serde error: keep its location and message, find the field at that line.
    pub fn from_yaml(file: &str, source: &str, err: &serde_saphyr::Error) -> Self {
        let rendered = err.to_string();
        let first = rendered.lines().next().unwrap_or("invalid YAML");
        // "error: line 4 column 5: <message>" -> "<message>"
        let message = first
            .strip_prefix("error: ")
            .unwrap_or(first)
            .split_once(": ")
            .filter(|(head, _)| head.starts_with("line "))
            .map(|(_, m)| m)
            .unwrap_or(first)
            .to_string();
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ConfigError {
            file: file.into(),
            line,
            column,
            field: field_at(source, line),
            message,
            source_line: source_line(source, line),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(src) = &self.source_line {
            write!(f, "\n  {:>4} | {}", self.line, src)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn source_line(source: &str, line: u64) -> Option<String> {
    if line == 0 {
        return None;
    }
    source
        .lines()
        .nth(line as usize - 1)
        .map(|l| l.chars().take(160).collect())
}

/// The key of the mapping entry a line belongs to: the line's own `key:` or, for an item of
/// a flow or block list, the nearest `key:` above it with less indentation.
pub fn field_at(source: &str, line: u64) -> Option<String> {
    let lines: Vec<&str> = source.lines().collect();
    let start = (line as usize).checked_sub(1)?;
    let mut indent_limit = usize::MAX;
    for l in lines.get(..=start)?.iter().rev() {
        let body = l.trim_start();
        let indent = l.len() - body.len();
        if body.is_empty() || body.starts_with('#') || indent > indent_limit {
            continue;
        }
        let body = body.strip_prefix("- ").unwrap_or(body).trim_start();
        if let Some((key, _)) = body.split_once(':')
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Some(key.to_string());
        }
        indent_limit = indent.saturating_sub(1);
    }
    None
}

/// The candidate a mistyped `name` most likely meant: one it begins (`h100` -> `h100-sxm`) or
/// is contained in, else the closest by edit distance when it is close enough to be a typo.
pub fn nearest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    if let Some(c) = candidates
        .iter()
        .find(|c| c.starts_with(&lower) || (lower.len() >= 3 && c.contains(lower.as_str())))
    {
        return Some(c);
    }
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(lower.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev + usize::from(ca != cb);
            prev = row[j + 1];
            row[j + 1] = sub.min(row[j] + 1).min(prev + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::{edit_distance, field_at, nearest};

    #[test]
    fn finds_the_field_of_a_line() {
        let src = "name: x\nruns:\n  - kernel: kv_decode\n    batch: [1,\n      -8]\n";
        assert_eq!(field_at(src, 3).as_deref(), Some("kernel"));
        assert_eq!(field_at(src, 4).as_deref(), Some("batch"));
        assert_eq!(field_at(src, 5).as_deref(), Some("batch"));
        assert_eq!(field_at(src, 0), None);
    }

    #[test]
    fn typos_find_their_name() {
        let hw = ["b200", "h100-sxm", "h200-sxm", "sram-die"];
        assert_eq!(nearest("h100", &hw), Some("h100-sxm"));
        assert_eq!(nearest("H200", &hw), Some("h200-sxm"));
        assert_eq!(nearest("h100-smx", &hw), Some("h100-sxm"));
        assert_eq!(nearest("sram", &hw), Some("sram-die"));
        assert_eq!(nearest("mi300x", &hw), None);
        let models = ["deepseek-v3", "kimi-k2.5", "llama-3.1-70b"];
        assert_eq!(nearest("kimi", &models), Some("kimi-k2.5"));
        assert_eq!(nearest("deepsek-v3", &models), Some("deepseek-v3"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
