//! The `functions` section: the host functions a snippet may call (`from host
//! import NAME`), each with its limits and whether a human approves every call.
//!
//! # Invariant
//! A snippet reaches only what is declared here: every call is checked by the host
//! against its entry (name, argument size, calls per run) before anything runs,
//! and every limit is finite.

use std::collections::BTreeMap;
use std::time::Duration;

use super::PolicyError;
use super::raw::{RawFunction, Seconds, Size};

/// A host function's timeout when the policy does not say.
pub const DEFAULT_FUNCTION_TIMEOUT_SECS: f64 = 10.0;
/// The longest timeout a host function may have.
pub const MAX_FUNCTION_TIMEOUT_SECS: f64 = 3_600.0;
/// Bytes of JSON arguments one call may carry when the policy does not say.
pub const DEFAULT_MAX_ARG_BYTES: u64 = 64 << 10;
/// Bytes of JSON result one call may return when the policy does not say.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 1 << 20;
/// The most either may be set to.
pub const MAX_CALL_BYTES: u64 = 16 << 20;
/// Calls of one function one run (or cell) may make when the policy does not say.
pub const DEFAULT_MAX_CALLS: u64 = 100;
/// The most calls of one function a policy may allow per run.
pub const MAX_CALLS: u64 = 100_000;
/// The most functions one policy may declare.
pub const MAX_FUNCTIONS: usize = 256;

/// One declared host function (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    /// How long one call may take (`timeout`); a call past it raises
    /// `TimeoutError` in the snippet. An approval's wait is not counted here: it
    /// has the approvals' own timeout.
    pub timeout: Duration,
    /// Largest JSON encoding of one call's arguments (`max_arg_bytes`).
    pub max_arg_bytes: u64,
    /// Largest JSON encoding of one call's result (`max_result_bytes`).
    pub max_result_bytes: u64,
    /// Calls one run or cell may make (`max_calls`).
    pub max_calls: u64,
    /// Every call waits for a human's approval (`critical: true`).
    pub critical: bool,
    /// The operator's program that implements it (`command`: argv, absolute
    /// program path, run without a shell): the arguments as JSON on its stdin,
    /// the result as JSON on its stdout. `None`: implemented by the embedding
    /// application (a Rust closure) or, over HTTP, by the API caller.
    pub command: Option<Vec<String>>,
}

/// Whether `name` can name a host function: a Python identifier of ASCII letters,
/// digits and underscores, not starting with a digit or an underscore, at most 64.
pub fn is_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl FunctionSpec {
    pub(super) fn to_raw(&self) -> RawFunction {
        RawFunction {
            timeout: Some(Seconds(self.timeout.as_secs_f64())),
            max_arg_bytes: Some(Size(self.max_arg_bytes)),
            max_result_bytes: Some(Size(self.max_result_bytes)),
            max_calls: Some(self.max_calls),
            critical: Some(self.critical),
            command: self.command.clone(),
        }
    }
}

/// Checks the `functions` section.
pub(super) fn function_policy(
    raw: BTreeMap<String, RawFunction>,
    invalid: &dyn Fn(&str, String) -> PolicyError,
) -> Result<BTreeMap<String, FunctionSpec>, PolicyError> {
    if raw.len() > MAX_FUNCTIONS {
        return Err(invalid("functions", format!("{} functions: at most {MAX_FUNCTIONS}", raw.len())));
    }
    let mut out = BTreeMap::new();
    for (name, f) in raw {
        let key = |field: &str| format!("functions.{name}.{field}");
        if !is_function_name(&name) {
            return Err(invalid(
                &format!("functions.{name}"),
                "a function's name is a Python identifier of ASCII letters, digits and _, starting with a letter, \
                 at most 64 characters"
                    .into(),
            ));
        }
        let timeout = match f.timeout {
            None => Duration::from_secs_f64(DEFAULT_FUNCTION_TIMEOUT_SECS),
            Some(Seconds(s)) if s > 0.0 && s <= MAX_FUNCTION_TIMEOUT_SECS => Duration::from_secs_f64(s),
            Some(Seconds(s)) => {
                return Err(invalid(
                    &key("timeout"),
                    format!("{s} seconds: expected 0 < seconds ≤ {MAX_FUNCTION_TIMEOUT_SECS}"),
                ));
            }
        };
        let bytes = |field: &str, v: Option<Size>, default: u64| match v {
            None => Ok(default),
            Some(Size(n)) if (2..=MAX_CALL_BYTES).contains(&n) => Ok(n),
            Some(Size(n)) => Err(invalid(&key(field), format!("{n} bytes: expected 2 bytes to 16 MiB"))),
        };
        let max_arg_bytes = bytes("max_arg_bytes", f.max_arg_bytes, DEFAULT_MAX_ARG_BYTES)?;
        let max_result_bytes = bytes("max_result_bytes", f.max_result_bytes, DEFAULT_MAX_RESULT_BYTES)?;
        let max_calls = match f.max_calls {
            None => DEFAULT_MAX_CALLS,
            Some(n) if (1..=MAX_CALLS).contains(&n) => n,
            Some(n) => return Err(invalid(&key("max_calls"), format!("{n}: expected 1 to {MAX_CALLS}"))),
        };
        if let Some(argv) = &f.command {
            let Some(program) = argv.first() else {
                return Err(invalid(&key("command"), "an empty argv: name the program".into()));
            };
            if !program.starts_with('/') {
                return Err(invalid(
                    &key("command"),
                    format!("{program:?}: the program must be an absolute path (it runs without a shell or PATH)"),
                ));
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(invalid(&key("command"), "an argument contains a NUL byte".into()));
            }
        }
        let spec = FunctionSpec {
            timeout,
            max_arg_bytes,
            max_result_bytes,
            max_calls,
            critical: f.critical.unwrap_or(false),
            command: f.command,
        };
        out.insert(name, spec);
    }
    Ok(out)
}
