//! Reading values out of the daemon's Prometheus text exposition.

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Label pairs in the order printed.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Parses every sample line of a Prometheus text exposition (comments and blank lines skipped,
/// timestamps ignored).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], Vec::new(), &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        out.push((key, value));
        rest = after[end? + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(out)
}

/// The value of metric `name` whose labels include every pair in `labels`, summed over all series
/// that match (so `metric_value(t, "tunneld_packets_total", &[])` is the total of both directions).
/// `None` when no series matches: the metric is absent, which a test usually reports as a failure.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for s in parse(text) {
        if s.name != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if all {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP tunneld_sessions_active Sessions now.
# TYPE tunneld_sessions_active gauge
tunneld_sessions_active 2
tunneld_packets_dropped_total{reason="spoofed_source"} 5
tunneld_packets_dropped_total{reason="malformed"} 1
tunneld_bytes_total{direction="up",proto="x"} 1.5e3
tunneld_weird{a="q\"uote",b="c,d"} 7 1700000000
"#;

    #[test]
    fn reads_plain_and_labelled_values() {
        assert_eq!(
            metric_value(TEXT, "tunneld_sessions_active", &[]),
            Some(2.0)
        );
        assert_eq!(
            metric_value(
                TEXT,
                "tunneld_packets_dropped_total",
                &[("reason", "spoofed_source")]
            ),
            Some(5.0)
        );
        assert_eq!(
            metric_value(TEXT, "tunneld_bytes_total", &[("direction", "up")]),
            Some(1500.0)
        );
    }

    #[test]
    fn sums_series_when_labels_are_a_subset() {
        assert_eq!(
            metric_value(TEXT, "tunneld_packets_dropped_total", &[]),
            Some(6.0)
        );
    }

    #[test]
    fn absent_metric_or_label_is_none() {
        assert_eq!(metric_value(TEXT, "tunneld_nope", &[]), None);
        assert_eq!(
            metric_value(
                TEXT,
                "tunneld_packets_dropped_total",
                &[("reason", "queue_full")]
            ),
            None
        );
    }

    #[test]
    fn handles_escaped_quotes_commas_and_timestamps() {
        assert_eq!(
            metric_value(TEXT, "tunneld_weird", &[("a", "q\"uote"), ("b", "c,d")]),
            Some(7.0)
        );
    }
}
