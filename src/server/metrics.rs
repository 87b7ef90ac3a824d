//! Counters and gauges the server exposes at `GET /metrics`, in the OpenMetrics
//! text format, encoded by `prometheus-client`.
//!
//! Label values come only from Terrarium's own vocabularies (route templates,
//! status codes, tier and status names, breaker names), never from request text, so
//! the number of series stays bounded whatever clients send.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    tier: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    breaker: String,
}

/// What is sampled when the metrics are scraped rather than counted as it happens.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Runs and commands in a tier now.
    pub running: i64,
    /// Each breaker's state: 0 closed, 1 half-open, 2 open.
    pub breakers: Vec<(String, i64)>,
    /// Critical operations waiting for a human.
    pub approvals_pending: i64,
    /// Workspaces whose live files differ from their current version.
    pub workspaces_drifted: i64,
    /// 1 while an emergency stop is in force.
    pub stopped: i64,
    /// Audit events not yet in the database.
    pub audit_backlog: i64,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    /// Requests being served now.
    pub in_flight: Gauge,
    running: Gauge,
    breakers: Family<BreakerLabels, Gauge>,
    approvals_pending: Gauge,
    workspaces_drifted: Gauge,
    stopped: Gauge,
    audit_backlog: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            rejected: Family::default(),
            outcomes: Family::default(),
            in_flight: Gauge::default(),
            running: Gauge::default(),
            breakers: Family::default(),
            approvals_pending: Gauge::default(),
            workspaces_drifted: Gauge::default(),
            stopped: Gauge::default(),
            audit_backlog: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "terrarium_http_requests",
            "HTTP requests answered, by route template and status code",
            m.requests.clone(),
        );
        registry.register(
            "terrarium_rejected",
            "Requests refused before they were served, by reason",
            m.rejected.clone(),
        );
        registry.register("terrarium_outcomes", "Snippet runs, by tier and outcome status", m.outcomes.clone());
        registry.register("terrarium_in_flight", "Requests being served now", m.in_flight.clone());
        registry.register(
            "terrarium_running",
            "Runs and commands in a tier now (0 when runs are not limited)",
            m.running.clone(),
        );
        registry.register(
            "terrarium_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            m.breakers.clone(),
        );
        registry.register(
            "terrarium_approvals_pending",
            "Critical operations waiting for a human",
            m.approvals_pending.clone(),
        );
        registry.register(
            "terrarium_workspaces_drifted",
            "Workspaces whose live files differ from their current version (changed behind Terrarium's back)",
            m.workspaces_drifted.clone(),
        );
        registry.register(
            "terrarium_stopped",
            "1 while an emergency stop is in force (new work is refused until an operator resumes)",
            m.stopped.clone(),
        );
        registry.register(
            "terrarium_audit_backlog",
            "Audit events recorded in the journal and not yet in the database (new work is refused past 65536)",
            m.audit_backlog.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &str, code: u16) {
        self.requests.get_or_create(&RequestLabels { route: escape(route), code }).inc();
    }

    /// Counts one rejection (`busy`, `unauthorized`, `forbidden`, `too_large`, …).
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts one outcome.
    pub fn outcome(&self, tier: crate::Tier, status: crate::Status) {
        self.outcomes.get_or_create(&OutcomeLabels { tier: tier.as_str(), status: status.as_str() }).inc();
    }

    /// The text format, with `scrape`'s samples.
    pub fn render(&self, scrape: &Scrape) -> String {
        self.running.set(scrape.running);
        self.approvals_pending.set(scrape.approvals_pending);
        self.workspaces_drifted.set(scrape.workspaces_drifted);
        self.stopped.set(scrape.stopped);
        self.audit_backlog.set(scrape.audit_backlog);
        for (name, state) in &scrape.breakers {
            self.breakers.get_or_create(&BreakerLabels { breaker: escape(name) }).set(*state);
        }
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would leave what was
        // written so far, which is still valid up to that family.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A label value with `\`, `"` and newlines escaped (the encoder writes label
/// values as given).
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
        m.outcome(crate::Tier::Rustpython, crate::Status::Ok);
        let text = m.render(&Scrape { breakers: vec![("api".into(), 0)], ..Scrape::default() });
        assert!(text.contains("# TYPE terrarium_http_requests counter\n"), "{text}");
        assert!(text.contains("terrarium_http_requests_total{route=\"/v1/execute\",code=\"200\"} 2\n"), "{text}");
        assert!(text.contains("terrarium_rejected_total{reason=\"busy\"} 1\n"), "{text}");
        assert!(text.contains("terrarium_outcomes_total{tier=\"rustpython\",status=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("terrarium_in_flight 0\n"), "{text}");
        assert!(text.contains("terrarium_breaker_state{breaker=\"api\"} 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_route_with_quotes_cannot_break_the_format() {
        let m = Metrics::default();
        m.request("/a\"b\\c\nd", 404);
        let text = m.render(&Scrape::default());
        assert!(text.contains(r#"route="/a\"b\\c\nd""#), "{text}");
    }
}
