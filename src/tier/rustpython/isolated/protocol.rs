//! What the supervisor, the zygote and the children say to each other.
//!
//! - Control socket (`SOCK_SEQPACKET`, supervisor ↔ zygote): one JSON message per
//!   packet; [`FromZygote::Spawned`] carries the child's request socket and a pidfd
//!   as `SCM_RIGHTS`.
//! - Request socket (`SOCK_STREAM`, supervisor ↔ one child): the request as a
//!   length-prefixed JSON frame; the answer as [`ANSWER_MAGIC`] and a length-prefixed
//!   JSON frame. Anything else the child writes (its descriptor 2 is the same socket)
//!   is the runtime's last words before an abort, read only to tell an allocation
//!   failure from other crashes.
//!
//! # Security
//! Nothing from a child is trusted: frames are size-capped by the reader, and an
//! answer that does not parse is a crash, not an outcome.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::executor::Outcome;

/// Supervisor → zygote.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToZygote {
    /// First message: build the interpreter, import these modules, answer `Ready`.
    Init {
        /// Modules to import before forking (the policy's whitelist).
        preload: Vec<String>,
    },
    /// Fork one child with these limits.
    Spawn(SpawnSpec),
}

/// The limits a child enters before it reads its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// 0 for the shared pool; otherwise answered to one waiting request.
    pub token: u64,
    /// Bytes of address space beyond the zygote's own.
    pub memory: u64,
    /// CPU seconds (`RLIMIT_CPU`), a backstop behind the wall deadline.
    pub cpu_secs: u64,
    /// Enter new user/net/mount/IPC/UTS namespaces, where the kernel allows.
    pub namespaces: bool,
}

/// Zygote → supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromZygote {
    /// The interpreter is warm.
    Ready {
        /// The zygote's pid.
        pid: i32,
    },
    /// The interpreter could not be built.
    Failed {
        /// Why.
        message: String,
    },
    /// A child is waiting for its request; its socket and pidfd are attached.
    Spawned {
        /// The spawn's token.
        token: u64,
        /// The child's pid.
        pid: i32,
    },
    /// A spawn failed.
    SpawnFailed {
        /// The spawn's token.
        token: u64,
        /// Why.
        message: String,
    },
    /// A child ended and was reaped.
    Exited {
        /// Its pid.
        pid: i32,
        /// Exit code, when it exited.
        code: Option<i32>,
        /// Signal number, when a signal ended it.
        signal: Option<i32>,
        /// CPU time, µs.
        cpu_us: u64,
        /// Peak resident set, KiB.
        maxrss_kb: u64,
    },
}

/// Supervisor → child: one run.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildRequest {
    /// The caller's request id.
    pub id: Option<String>,
    /// Source.
    pub code: String,
    /// Modules the run may import.
    pub allowed_modules: BTreeSet<String>,
    /// Output cap, bytes.
    pub max_output: u64,
    /// Wall deadline, ms (the supervisor kills at it; the child uses it to wake
    /// from `time.sleep`).
    pub timeout_ms: u64,
    /// Host-only test hook: instead of running code, attempt this forbidden system
    /// call after confinement (see `IsolatedExecutor::probe_forbidden_syscall`).
    pub probe: Option<String>,
}

/// Child → supervisor: the outcome and what the run cost.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildAnswer {
    /// The outcome (wall time is filled in by the supervisor).
    pub outcome: Outcome,
    /// CPU time of the child, µs.
    pub cpu_us: u64,
    /// Peak resident set of the child, KiB.
    pub maxrss_kb: u64,
    /// Whether the child entered new namespaces.
    pub namespaces: bool,
}

/// Marks the start of an answer frame on the request socket.
pub const ANSWER_MAGIC: &[u8; 8] = b"TRRMv1\0\0";

/// Largest control message.
pub const MAX_CONTROL: usize = 64 * 1024;

/// Writes `value` as a length-prefixed JSON frame.
///
/// # Errors
/// Serialisation or I/O errors.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
}

/// Reads one length-prefixed JSON frame of at most `max` bytes.
///
/// # Errors
/// I/O errors, an oversized frame, or JSON that does not match `T`.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read, max: usize) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::other(format!("frame of {len} bytes exceeds {max}")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(io::Error::other)
}

/// Whether `bytes` holds a whole answer frame (magic, length, body).
pub fn answer_complete(bytes: &[u8]) -> bool {
    let Some(rest) = bytes.strip_prefix(ANSWER_MAGIC.as_slice()) else {
        return false;
    };
    rest.split_first_chunk::<4>().is_some_and(|(len, body)| body.len() >= u32::from_le_bytes(*len) as usize)
}

/// Parses what a child wrote on its request socket: `Ok(answer)` when it is a
/// complete answer frame, `Err(text)` with the child's last words otherwise.
pub fn parse_answer(bytes: &[u8]) -> Result<ChildAnswer, String> {
    let last_words = || String::from_utf8_lossy(bytes).chars().take(4096).collect::<String>();
    let Some(rest) = bytes.strip_prefix(ANSWER_MAGIC.as_slice()) else {
        return Err(last_words());
    };
    let Some((len, body)) = rest.split_first_chunk::<4>() else {
        return Err(last_words());
    };
    let len = u32::from_le_bytes(*len) as usize;
    if body.len() != len {
        return Err(last_words());
    }
    serde_json::from_slice(body).map_err(|_| last_words())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{Status, Tier};

    #[test]
    fn answers_round_trip_and_anything_else_is_last_words() {
        let answer = ChildAnswer {
            outcome: Outcome::refused(None, Tier::Rustpython, Status::Ok, "", ""),
            cpu_us: 5,
            maxrss_kb: 6,
            namespaces: true,
        };
        let mut bytes = ANSWER_MAGIC.to_vec();
        write_frame(&mut bytes, &answer).expect("frame");
        let back = parse_answer(&bytes).expect("answer");
        assert_eq!(back.cpu_us, 5);
        assert_eq!(back.outcome.status, Status::Ok);
        assert_eq!(
            parse_answer(b"memory allocation of 9 bytes failed\n").err().as_deref(),
            Some("memory allocation of 9 bytes failed\n")
        );
        assert!(parse_answer(&bytes[..bytes.len() - 1]).is_err(), "a truncated answer is not an answer");
        assert!(answer_complete(&bytes));
        assert!(!answer_complete(&bytes[..bytes.len() - 1]));
        assert!(!answer_complete(b"memory allocation"));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &"x".repeat(100)).expect("frame");
        let err = read_frame::<String>(&mut bytes.as_slice(), 10).expect_err("too big");
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
