//! The `alerts` section: where events that need a human are sent (a webhook, a
//! command), and how often.
//!
//! # Invariant
//! A notifier never runs through a shell (the command is an argv), the webhook is
//! plain HTTP to an address given as `http://HOST:PORT/PATH` (a local relay; no
//! redirects are followed), and every bound is finite.

use super::PolicyError;
use super::raw::{RawAlerts, Seconds};

/// The `alerts` section (defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertPolicy {
    /// `http://HOST:PORT/PATH` a JSON POST goes to for each alert.
    pub webhook: Option<String>,
    /// A program and its arguments, run for each alert with the alert as JSON on
    /// its stdin (never through a shell).
    pub command: Option<Vec<String>>,
    /// Least time between two alerts of one kind; those in between are counted
    /// and reported with the next one.
    pub min_interval: std::time::Duration,
    /// More denials than this within a minute is an alert.
    pub denials_per_minute: u32,
    /// Attempts to deliver one alert to the webhook (backing off 1 s, 2 s, 4 s…).
    pub attempts: u32,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        AlertPolicy {
            webhook: None,
            command: None,
            min_interval: std::time::Duration::from_secs(300),
            denials_per_minute: 20,
            attempts: 4,
        }
    }
}

impl AlertPolicy {
    /// Whether any notifier is configured.
    pub fn enabled(&self) -> bool {
        self.webhook.is_some() || self.command.is_some()
    }

    pub(super) fn to_raw(&self) -> Option<RawAlerts> {
        (*self != AlertPolicy::default()).then(|| RawAlerts {
            webhook: self.webhook.clone(),
            command: self.command.clone(),
            min_interval: Some(Seconds(self.min_interval.as_secs_f64())),
            denials_per_minute: Some(self.denials_per_minute),
            attempts: Some(self.attempts),
        })
    }
}

/// `(host:port, path)` of a webhook address, or why it is not one.
pub fn webhook_target(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or("expected http://HOST:PORT/PATH (plain HTTP to a local relay)")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let port_ok =
        authority.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err("expected http://HOST:PORT/PATH with an explicit port".into());
    }
    if path.chars().any(|c| c.is_control() || c == ' ')
        || authority.chars().any(|c| c.is_control() || c == ' ' || c == '@')
    {
        return Err("no spaces, control characters or credentials in the address".into());
    }
    Ok((authority.to_string(), path))
}

/// Checks the `alerts` section.
pub(super) fn alert_policy(
    raw: RawAlerts,
    invalid: &dyn Fn(&str, String) -> PolicyError,
) -> Result<AlertPolicy, PolicyError> {
    let mut p = AlertPolicy::default();
    if let Some(url) = raw.webhook {
        webhook_target(&url).map_err(|why| invalid("alerts.webhook", format!("{url:?}: {why}")))?;
        p.webhook = Some(url);
    }
    if let Some(argv) = raw.command {
        match argv.first() {
            None => {
                return Err(invalid("alerts.command", "an empty command: give the program and its arguments".into()));
            }
            Some(program) if !program.starts_with('/') => {
                return Err(invalid("alerts.command", format!("{program:?}: the program must be an absolute path")));
            }
            Some(_) => {}
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(invalid("alerts.command", "an argument holds a NUL byte".into()));
        }
        p.command = Some(argv);
    }
    if let Some(Seconds(s)) = raw.min_interval {
        if !(0.0..=86_400.0).contains(&s) || !s.is_finite() {
            return Err(invalid("alerts.min_interval", format!("{s}: expected 0 to 86400 seconds")));
        }
        p.min_interval = std::time::Duration::from_secs_f64(s);
    }
    if let Some(n) = raw.denials_per_minute {
        if n == 0 {
            return Err(invalid("alerts.denials_per_minute", "must be at least 1".into()));
        }
        p.denials_per_minute = n;
    }
    if let Some(n) = raw.attempts {
        if !(1..=10).contains(&n) {
            return Err(invalid("alerts.attempts", format!("{n}: expected 1 to 10")));
        }
        p.attempts = n;
    }
    Ok(p)
}
