//! One tier's side of a session: a confined child, instance or container kept for
//! a sequence of cells that share interpreter state.
//!
//! # Invariants
//! - A session's state lives only in its own child (instance, container): no other
//!   session and no single run ever sees it.
//! - A cell that ends at a limit, or leaves its interpreter unable to go on, ends
//!   the session: its child is killed at once, the cell's outcome says so
//!   ([`CellInfo::ended`]), and every later cell is refused with
//!   [`SandboxError::SessionEnded`], never run on a half-state.
//! - An idle or expired session's child is killed by the host in the background,
//!   not when the next cell happens to come.

use serde::{Deserialize, Serialize};

use super::{BoxFuture, ExecRequest, Outcome};
use crate::error::SandboxError;

/// Where a cell stands in its session (in the outcomes of session cells only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CellInfo {
    /// This cell's number in its session, from 1.
    pub cell: u64,
    /// Why the session ended with this cell, when it did (its state is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// A tier's session: runs cells in the state its earlier cells left.
pub trait TierSession: Send {
    /// Runs one cell: `req.code` in the session's state, under the request's
    /// policy (its timeout and output cap are the cell's); the last expression's
    /// value is the result.
    ///
    /// # Errors
    /// [`SandboxError::SessionEnded`] once the session has ended (the reason); as
    /// for [`super::Executor::execute`] otherwise.
    fn execute(&mut self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>>;

    /// Why the session ended, once it has.
    fn ended(&self) -> Option<String>;

    /// Ends the session now: its state is gone, its child is killed. Ending an
    /// ended session changes nothing (the first reason stays).
    fn end(&mut self, reason: &str);

    /// Cells run so far.
    fn cells(&self) -> u64;
}
