//! Counters and gauges the server exposes at `GET /metrics`, in the Prometheus
//! text format (version 0.0.4).
//!
//! Label values come only from Terrarium's own vocabularies (route templates,
//! status codes, tier and status names), never from request text, so the number of
//! series stays bounded whatever clients send.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// A gauge family computed at scrape time: name, help, `(labels, value)` rows.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

/// The server's metrics.
#[derive(Default)]
pub struct Metrics {
    /// `terrarium_http_requests_total{route,code}`.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// `terrarium_rejected_total{reason}`: busy, unauthorized, forbidden, too_large.
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// `terrarium_outcomes_total{tier,status}`.
    outcomes: Mutex<BTreeMap<(String, String), u64>>,
    /// `terrarium_in_flight`: requests being served.
    pub in_flight: AtomicI64,
}

fn rows<K>(m: &Mutex<BTreeMap<K, u64>>, f: impl Fn(&K) -> String) -> Vec<(String, f64)> {
    m.lock().map(|m| m.iter().map(|(k, v)| (f(k), *v as f64)).collect()).unwrap_or_default()
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += 1;
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &str, code: u16) {
        bump(&self.requests, (route.to_string(), code));
    }

    /// Counts one rejection.
    pub fn rejected(&self, reason: &'static str) {
        bump(&self.rejected, reason);
    }

    /// Counts one outcome.
    pub fn outcome(&self, tier: &str, status: &str) {
        bump(&self.outcomes, (tier.to_string(), status.to_string()));
    }

    /// The text format; `extra` gauges are appended as given
    /// (`(name, help, [(labels, value)])`).
    pub fn render(&self, extra: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = if labels.is_empty() {
                    writeln!(out, "{name} {v}")
                } else {
                    writeln!(out, "{name}{{{labels}}} {v}")
                };
            }
        };
        family(
            "terrarium_http_requests_total",
            "counter",
            "HTTP requests answered, by route template and status code.",
            rows(&self.requests, |(r, c): &(String, u16)| format!("route=\"{}\",code=\"{c}\"", escape(r))),
        );
        family(
            "terrarium_rejected_total",
            "counter",
            "Requests refused before they were served, by reason.",
            rows(&self.rejected, |r: &&str| format!("reason=\"{r}\"")),
        );
        family(
            "terrarium_outcomes_total",
            "counter",
            "Snippet runs, by tier and outcome status.",
            rows(&self.outcomes, |(t, s): &(String, String)| {
                format!("tier=\"{}\",status=\"{}\"", escape(t), escape(s))
            }),
        );
        family(
            "terrarium_in_flight",
            "gauge",
            "Requests being served now.",
            vec![(String::new(), self.in_flight.load(Ordering::Relaxed) as f64)],
        );
        for (name, help, rows) in extra {
            family(name, "gauge", help, rows.clone());
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_help_type_and_labelled_samples() {
        let m = Metrics::default();
        m.request("/v1/execute", 200);
        m.request("/v1/execute", 200);
        m.rejected("busy");
        m.outcome("rustpython", "ok");
        let text = m.render(&[("terrarium_breaker_open", "Open breakers.", vec![("breaker=\"api\"".into(), 0.0)])]);
        assert!(text.contains("# TYPE terrarium_http_requests_total counter\n"), "{text}");
        assert!(text.contains("terrarium_http_requests_total{route=\"/v1/execute\",code=\"200\"} 2\n"), "{text}");
        assert!(text.contains("terrarium_rejected_total{reason=\"busy\"} 1\n"), "{text}");
        assert!(text.contains("terrarium_outcomes_total{tier=\"rustpython\",status=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("terrarium_in_flight 0\n"), "{text}");
        assert!(text.contains("terrarium_breaker_open{breaker=\"api\"} 0\n"), "{text}");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
