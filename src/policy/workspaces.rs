//! The `workspaces` section: which workspaces runs under this policy may mount,
//! where they are kept, and the quotas each version must fit.
//!
//! # Invariant
//! A run mounts a workspace only when the policy names it (or `"*"`), and every
//! quota is finite: a run's change set is read back only up to these bounds.

use std::path::PathBuf;

use super::PolicyError;
use super::raw::{RawWorkspaces, Size};

/// Bounds on what one version of a workspace may hold (the policy's
/// `workspaces` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Files and directories, at most.
    pub max_files: u64,
    /// One file's size, at most.
    pub max_file_bytes: u64,
    /// All files together, at most.
    pub max_total_bytes: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota { max_files: 10_000, max_file_bytes: 64 << 20, max_total_bytes: 256 << 20 }
    }
}

impl Quota {
    /// No bound (for reading a live directory the operator owns).
    pub const NONE: Quota = Quota { max_files: u64::MAX, max_file_bytes: u64::MAX, max_total_bytes: u64::MAX };
}

/// Whether `name` can name a workspace: 1–64 of `A-Z a-z 0-9 . _ -`, starting
/// with a letter or digit.
pub fn valid_workspace_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The largest `max_files` a policy may give.
pub const MAX_FILES: u64 = 1_000_000;

/// The `workspaces` section (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkspacePolicy {
    /// Workspace names runs may mount (`"*"`: any); empty: none.
    pub allow: Vec<String>,
    /// Where workspaces are kept (`None`: `workspaces` in `$TERRARIUM_HOME`).
    pub root: Option<PathBuf>,
    /// What one version may hold.
    pub quota: Quota,
}

impl WorkspacePolicy {
    /// Whether runs may mount workspace `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.allow.iter().any(|a| a == "*" || a == name)
    }

    pub(super) fn to_raw(&self) -> Option<RawWorkspaces> {
        (*self != WorkspacePolicy::default()).then(|| RawWorkspaces {
            allow: Some(self.allow.clone()),
            root: self.root.as_ref().map(|r| r.display().to_string()),
            max_files: Some(self.quota.max_files),
            max_file_size: Some(Size(self.quota.max_file_bytes)),
            max_total_size: Some(Size(self.quota.max_total_bytes)),
        })
    }
}

/// Checks the `workspaces` section.
pub(super) fn workspace_policy(
    raw: RawWorkspaces,
    invalid: &dyn Fn(&str, String) -> PolicyError,
) -> Result<WorkspacePolicy, PolicyError> {
    let mut p = WorkspacePolicy::default();
    for (i, name) in raw.allow.unwrap_or_default().into_iter().enumerate() {
        if name != "*" && !valid_workspace_name(&name) {
            return Err(invalid(
                &format!("workspaces.allow[{i}]"),
                format!("{name:?} is not a workspace name (1-64 letters, digits, '.', '_' or '-') or \"*\""),
            ));
        }
        p.allow.push(name);
    }
    if let Some(root) = raw.root {
        let path = PathBuf::from(&root);
        if !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(invalid("workspaces.root", format!("{root:?} is not an absolute path without '..'")));
        }
        p.root = Some(path);
    }
    if let Some(n) = raw.max_files {
        if !(1..=MAX_FILES).contains(&n) {
            return Err(invalid("workspaces.max_files", format!("{n}: expected 1 to {MAX_FILES}")));
        }
        p.quota.max_files = n;
    }
    if let Some(Size(n)) = raw.max_file_size {
        if n == 0 {
            return Err(invalid("workspaces.max_file_size", "must be at least 1 byte".into()));
        }
        p.quota.max_file_bytes = n;
    }
    if let Some(Size(n)) = raw.max_total_size {
        if n == 0 {
            return Err(invalid("workspaces.max_total_size", "must be at least 1 byte".into()));
        }
        p.quota.max_total_bytes = n;
    }
    Ok(p)
}
