//! Prometheus' text exposition format (version 0.0.4): metric families, each a `# HELP` and a
//! `# TYPE` line followed by all of its samples, label values and help texts escaped as the
//! format says, values as Go's float parser reads them (`NaN`, `+Inf`, `-Inf`).
//!
//! [`Exposition`] groups samples into families whatever order they are added in, and refuses
//! what would make the output invalid: a malformed name, a family added again with another
//! type, the same label set twice in a family.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use vu_core::MetricType;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a sample was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("{0:?} is not a valid metric name")]
    Name(String),
    /// Not `[a-zA-Z_][a-zA-Z0-9_]*`, or reserved (`__` prefix), or repeated in a sample.
    #[error("metric {name}: {label:?} is not a valid label name here")]
    Label {
        /// The metric.
        name: String,
        /// The label.
        label: String,
    },
    /// The family exists with another type.
    #[error("metric {0} was already added with another type")]
    Type(String),
    /// The family has a sample with the same labels.
    #[error("metric {name} already has a sample with labels {{{labels}}}")]
    Duplicate {
        /// The metric.
        name: String,
        /// The labels, rendered.
        labels: String,
    },
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: MetricType,
    /// Rendered label sets (`a="x",b="y"`) and values, in the order added.
    samples: Vec<(String, f64)>,
    seen: HashSet<String>,
}

/// Metric families being put together for one exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample of the family `name` (the full name, with prefix and suffixes). The
    /// first sample of a family sets its help text and type.
    pub fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Result<(), RenderError> {
        if !is_metric_name(name) {
            return Err(RenderError::Name(name.to_string()));
        }
        let mut rendered = String::new();
        for (i, (label, v)) in labels.iter().enumerate() {
            if !is_label_name(label) || labels[..i].iter().any(|(l, _)| l == label) {
                return Err(RenderError::Label {
                    name: name.to_string(),
                    label: label.to_string(),
                });
            }
            if i > 0 {
                rendered.push(',');
            }
            let _ = write!(rendered, "{label}=\"{}\"", escape_label_value(v));
        }
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    samples: Vec::new(),
                    seen: HashSet::new(),
                });
                self.index.insert(name.to_string(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let f = &mut self.families[i];
        if f.kind != kind {
            return Err(RenderError::Type(name.to_string()));
        }
        if !f.seen.insert(rendered.clone()) {
            return Err(RenderError::Duplicate {
                name: name.to_string(),
                labels: rendered,
            });
        }
        f.samples.push((rendered, value));
        Ok(())
    }

    /// The text exposition: each family with its help, type and samples, in the order the
    /// families were first added.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for (labels, value) in &f.samples {
                out.push_str(&f.name);
                if !labels.is_empty() {
                    let _ = write!(out, "{{{labels}}}");
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
pub fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !s.starts_with("__")
}

/// A label value as the format writes it between quotes: `\`, `"` and newline escaped.
pub fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A help text as the format writes it: `\` and newline escaped (quotes are fine there).
pub fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A value as Prometheus parses it: integers without a fraction, `NaN`, `+Inf`, `-Inf`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Rust prints floats in full without an exponent (1e21 -> "1000000000000000000000"),
        // and whole numbers without ".0": both are valid for Go's ParseFloat.
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_their_samples_with_help_and_type() {
        let mut e = Exposition::new();
        let c = MetricType::Counter;
        e.add("vu_a_total", "A.", c, &[("device", "d0")], 1.0)
            .expect("add");
        e.add("vu_b", "B.", MetricType::Gauge, &[], 2.5)
            .expect("add");
        e.add("vu_a_total", "A again.", c, &[("device", "d1")], 3.0)
            .expect("add");
        assert_eq!(
            e.render(),
            "# HELP vu_a_total A.\n# TYPE vu_a_total counter\n\
             vu_a_total{device=\"d0\"} 1\nvu_a_total{device=\"d1\"} 3\n\
             # HELP vu_b B.\n# TYPE vu_b gauge\nvu_b 2.5\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.add(
            "vu_info",
            "Say \"hi\" \\ then\nbye.",
            MetricType::Gauge,
            &[("path", "/run/a\"b\\c\nd ÿ}{,=")],
            1.0,
        )
        .expect("add");
        assert_eq!(
            e.render(),
            "# HELP vu_info Say \"hi\" \\\\ then\\nbye.\n# TYPE vu_info gauge\n\
             vu_info{path=\"/run/a\\\"b\\\\c\\nd ÿ}{,=\"} 1\n"
        );
    }

    #[test]
    fn what_would_break_the_format_is_refused() {
        let mut e = Exposition::new();
        let g = MetricType::Gauge;
        for bad in ["", "1a", "a-b", "a b", "a\nb", "a{b}", "é"] {
            assert!(
                matches!(e.add(bad, "x", g, &[], 0.0), Err(RenderError::Name(_))),
                "{bad:?}"
            );
        }
        for bad in ["", "__x", "a:b", "a-b", "1a", "a\"", "a b"] {
            assert!(
                matches!(
                    e.add("vu_x", "x", g, &[(bad, "v")], 0.0),
                    Err(RenderError::Label { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            e.add("vu_x", "x", g, &[("a", "1"), ("a", "2")], 0.0),
            Err(RenderError::Label { .. })
        ));
        e.add("vu_x", "x", g, &[("a", "1")], 0.0).expect("add");
        assert!(matches!(
            e.add("vu_x", "x", g, &[("a", "1")], 5.0),
            Err(RenderError::Duplicate { .. })
        ));
        assert!(matches!(
            e.add("vu_x", "x", MetricType::Counter, &[("a", "2")], 0.0),
            Err(RenderError::Type(_))
        ));
        // Refused samples leave nothing behind; names that never got a sample print nothing.
        assert_eq!(
            e.render(),
            "# HELP vu_x x\n# TYPE vu_x gauge\nvu_x{a=\"1\"} 0\n"
        );
        assert!(is_metric_name("vu_a:b_total") && is_label_name("_a1"));
    }

    #[test]
    fn values_print_as_prometheus_reads_them() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(42.0), "42");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(-3.5), "-3.5");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(u64::MAX as f64), "18446744073709552000");
        assert_eq!(format_value((1u64 << 53) as f64), "9007199254740992");
    }
}
