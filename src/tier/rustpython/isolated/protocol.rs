//! What the supervisor, the zygote and the children say to each other.
//!
//! - Control socket (`SOCK_SEQPACKET`, supervisor ↔ zygote): one JSON message per
//!   packet; [`FromZygote::Spawned`] carries the child's request socket, its
//!   last-words socket and a pidfd as `SCM_RIGHTS`.
//! - Request socket (`SOCK_STREAM`, supervisor ↔ one child, the child's
//!   descriptor 3): the request as a length-prefixed JSON frame; then, from the
//!   child, [`ChildMessage`]s, each [`ANSWER_MAGIC`] and a length-prefixed JSON
//!   frame: zero or more denials as they happen, then one answer. Only Terrarium's
//!   Rust code in the child writes here; no interpreter code path reaches
//!   descriptor 3.
//! - Last-words socket (the child's descriptor 2): whatever the runtime prints
//!   before an abort (an allocation failure, a stack overflow). Interpreter code
//!   can write here too, so it is read only to name the cause of a death the host
//!   saw itself (the signal), never to decide an outcome.
//!
//! # Security
//! Nothing from a child is trusted: the stream is size-capped by the reader,
//! anything but message frames is a protocol error (the child is killed), and what
//! a child says is the guest's word: its output, its value, its exception. How the
//! run ended (tier, limits, denials seen, wall and CPU time, memory) is the
//! supervisor's observation.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

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
    /// Import the policy's modules before saying ready (see `zygote::child_warm_up`):
    /// asked for while no request is running (see `Zygote::refill`).
    pub warm_modules: bool,
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
    /// A child is waiting for its request; its request socket, last-words socket
    /// and pidfd are attached, in that order.
    Spawned {
        /// The spawn's token.
        token: u64,
        /// The child's pid.
        pid: i32,
        /// Whether it entered new namespaces (said before it read any request, so
        /// before any snippet ran in it).
        namespaces: bool,
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
    /// A cell of a session: the child keeps its interpreter's state and, after its
    /// answer, reads the session's next request on the same socket (the first
    /// request decides; a session child is never given to anyone else).
    pub session: bool,
    /// The host functions the run's `host` module offers (names only: the host
    /// checks every call).
    #[serde(default)]
    pub functions: Vec<String>,
    /// The run's fuel budget (`None`: none; the child counts all the same).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Test hook (builds with the `test-hooks` feature only): how the child
    /// misbehaves around its run (see `hooks.rs`).
    #[cfg(feature = "test-hooks")]
    pub probe: Option<String>,
}

/// Child → supervisor, on the answer socket: what the guest produced. Everything in
/// it is the guest's word: a child may be fully controlled by its snippet, so the
/// host takes from it only the guest's own output, never how the run ended (tier,
/// limits, usage), which the host decides from what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChildMessage {
    /// The policy refused something, at the moment it did. A run with one is
    /// `denied` whatever the child says afterwards: the guest can add denials, never
    /// retract one.
    Denial {
        /// What was refused (shown to the caller).
        reason: String,
    },
    /// A call of a host function: the child blocks until the host writes a
    /// [`CallAnswer`] frame on the request socket.
    Call(crate::executor::HostCall),
    /// The run's end, the last message a child sends. The supervisor kills the child
    /// when it reads it.
    Answer(GuestAnswer),
}

/// Supervisor → child: the reply to a [`ChildMessage::Call`], as a length-prefixed
/// JSON frame on the request socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallAnswer {
    /// What the guest gets.
    pub reply: crate::executor::CallReply,
    /// How long the host took, ms: the child moves its deadline by it, as the
    /// supervisor does.
    pub waited_ms: u64,
}

/// What a snippet produced, as its child reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestAnswer {
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// The last expression's value as JSON.
    pub result: Option<serde_json::Value>,
    /// How the snippet's code ended.
    pub end: GuestEnd,
    /// The child cut its output at the cap (the host also checks the sizes itself).
    pub output_over: bool,
    /// The child can run a session's next cell (no terminal condition unwound its
    /// interpreter and it did not fail). The guest's word: it can only end its own
    /// session early, never keep another's going.
    #[serde(default)]
    pub can_continue: bool,
    /// Fuel the run used, as the child's interpreter counted it (see `decide`).
    #[serde(default)]
    pub fuel_used: u64,
    /// The run used up its fuel budget.
    #[serde(default)]
    pub fuel_out: bool,
}

/// How the snippet's code ended, as its child reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestEnd {
    /// It ran to the end.
    Returned,
    /// It raised.
    Raised {
        /// Exception class name.
        kind: String,
        /// Exception text.
        message: String,
    },
    /// The interpreter failed internally (a caught panic).
    Panicked,
}

/// How a child ends before it runs anything (its exit code). The host reports
/// each as a failure of confinement or set-up naming the step, never as a run's
/// outcome (see `supervise::classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// Its parent is not the zygote, or it cannot ask to die with it.
    NotTheZygotesChild = 70,
    /// Its descriptors could not be moved into place.
    Descriptors = 71,
    /// An rlimit could not be set.
    Rlimits = 72,
    /// The seccomp filter could not be built or entered.
    Seccomp = 73,
    /// The request socket could not be taken, or the interpreter's after-fork
    /// reset failed.
    Setup = 74,
    /// The request frame could not be read.
    NoRequest = 75,
    /// The ready byte could not be written.
    NotAnnounced = 76,
    /// A forbidden system call of the test hooks returned (the filter did not
    /// hold); test builds only.
    ForbiddenCallReturned = 77,
}

impl ChildExit {
    /// Every code, in order.
    const ALL: [ChildExit; 8] = [
        ChildExit::NotTheZygotesChild,
        ChildExit::Descriptors,
        ChildExit::Rlimits,
        ChildExit::Seccomp,
        ChildExit::Setup,
        ChildExit::NoRequest,
        ChildExit::NotAnnounced,
        ChildExit::ForbiddenCallReturned,
    ];

    /// The exit code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The reason a child exited with `code`, if it is one of these.
    pub fn from_code(code: i32) -> Option<ChildExit> {
        ChildExit::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Whether the child ended before it ran anything: every code but the test
    /// hooks' (a child that returned from a forbidden call had read its request; it
    /// is reported as a crash, as any exit without an answer).
    pub fn before_request(self) -> bool {
        self != ChildExit::ForbiddenCallReturned
    }

    /// What failed, for the host's error.
    pub fn step(self) -> &'static str {
        match self {
            ChildExit::NotTheZygotesChild => "it was not the zygote's child or could not follow its death",
            ChildExit::Descriptors => "its descriptors could not be set up",
            ChildExit::Rlimits => "an rlimit could not be set",
            ChildExit::Seccomp => "its seccomp filter could not be entered",
            ChildExit::Setup => "its request socket or interpreter reset failed",
            ChildExit::NoRequest => "its request could not be read",
            ChildExit::NotAnnounced => "it could not say it was ready",
            ChildExit::ForbiddenCallReturned => "a forbidden system call returned (the seccomp filter did not hold)",
        }
    }
}

/// Marks the start of every message frame on the answer socket.
pub const ANSWER_MAGIC: &[u8; 8] = b"TRRMv2\0\0";

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

/// Writes one message to the answer socket: [`ANSWER_MAGIC`], then a frame.
///
/// # Errors
/// Serialisation or I/O errors.
pub fn write_message(w: &mut impl Write, msg: &ChildMessage) -> io::Result<()> {
    let mut bytes = ANSWER_MAGIC.to_vec();
    write_frame(&mut bytes, msg)?;
    w.write_all(&bytes)
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

/// The supervisor's reader of one child's answer socket: bytes in, messages out,
/// with a cap on the whole stream.
#[derive(Debug)]
pub struct AnswerStream {
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    /// The denials read so far, in order.
    pub denials: Vec<String>,
}

/// What [`AnswerStream::push`] heard that the supervisor acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// The run's answer.
    Answer(GuestAnswer),
    /// A host function call, waiting for its reply.
    Call(crate::executor::HostCall),
}

/// Why a child's answer stream is not one the supervisor accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// More bytes than the cap.
    TooBig,
    /// Bytes that are not a message frame.
    Malformed,
}

impl AnswerStream {
    /// A reader that refuses more than `cap` bytes in all.
    pub fn new(cap: usize) -> AnswerStream {
        AnswerStream { buf: Vec::new(), pos: 0, cap, denials: Vec::new() }
    }

    /// Whether bytes follow the answer or call just returned by
    /// [`AnswerStream::push`].
    pub fn has_leftover(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Takes `bytes`; returns the answer or a call once one is complete (bytes
    /// after a call stay buffered: call `push(&[])` to read on). Denials before
    /// it are kept in [`AnswerStream::denials`].
    ///
    /// # Errors
    /// [`StreamError`] when the stream is over its cap or not made of message frames.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Heard>, StreamError> {
        if self.buf.len().saturating_add(bytes.len()) > self.cap {
            return Err(StreamError::TooBig);
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let rest = &self.buf[self.pos..];
            let head = ANSWER_MAGIC.len() + 4;
            if rest.len() < head {
                // A prefix of a frame is fine; anything else is not a frame.
                let n = rest.len().min(ANSWER_MAGIC.len());
                return if rest[..n] == ANSWER_MAGIC[..n] { Ok(None) } else { Err(StreamError::Malformed) };
            }
            if !rest.starts_with(ANSWER_MAGIC.as_slice()) {
                return Err(StreamError::Malformed);
            }
            let mut len = [0u8; 4];
            len.copy_from_slice(&rest[ANSWER_MAGIC.len()..head]);
            let len = u32::from_le_bytes(len) as usize;
            if len > self.cap {
                return Err(StreamError::TooBig);
            }
            let Some(body) = rest.get(head..head + len) else {
                return Ok(None);
            };
            let msg: ChildMessage = serde_json::from_slice(body).map_err(|_| StreamError::Malformed)?;
            self.pos += head + len;
            match msg {
                ChildMessage::Denial { reason } => self.denials.push(reason),
                ChildMessage::Answer(a) => return Ok(Some(Heard::Answer(a))),
                ChildMessage::Call(call) => {
                    // A call's bytes are not kept: calls do not add up against the
                    // stream's cap, only each frame does.
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    return Ok(Some(Heard::Call(call)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> GuestAnswer {
        GuestAnswer {
            stdout: "out".into(),
            stderr: String::new(),
            result: Some(serde_json::json!(2)),
            end: GuestEnd::Returned,
            output_over: false,
            fuel_used: 0,
            fuel_out: false,
            can_continue: true,
        }
    }

    #[test]
    fn denials_then_an_answer_read_in_any_chunks() {
        let mut bytes = Vec::new();
        write_message(&mut bytes, &ChildMessage::Denial { reason: "no".into() }).expect("frame");
        write_message(&mut bytes, &ChildMessage::Answer(answer())).expect("frame");
        for step in [1, 3, 7, bytes.len()] {
            let mut s = AnswerStream::new(1 << 20);
            let mut got = None;
            for chunk in bytes.chunks(step) {
                if let Some(Heard::Answer(a)) = s.push(chunk).expect("well formed") {
                    got = Some(a);
                }
            }
            assert_eq!(got, Some(answer()), "chunks of {step}");
            assert_eq!(s.denials, ["no"]);
        }
    }

    #[test]
    fn anything_but_frames_is_refused() {
        assert_eq!(
            AnswerStream::new(1 << 20).push(b"memory allocation of 9 bytes failed\n"),
            Err(StreamError::Malformed)
        );
        assert_eq!(AnswerStream::new(1 << 20).push(b"TRRMv1\0\0"), Err(StreamError::Malformed));
        assert_eq!(AnswerStream::new(1 << 20).push(b"TRR"), Ok(None), "a prefix waits for more");
        let mut bytes = ANSWER_MAGIC.to_vec();
        write_frame(&mut bytes, &"not a message").expect("frame");
        assert_eq!(AnswerStream::new(1 << 20).push(&bytes), Err(StreamError::Malformed));
        let mut big = Vec::new();
        write_message(&mut big, &ChildMessage::Answer(answer())).expect("frame");
        assert_eq!(AnswerStream::new(big.len() - 1).push(&big), Err(StreamError::TooBig));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &"x".repeat(100)).expect("frame");
        let err = read_frame::<String>(&mut bytes.as_slice(), 10).expect_err("too big");
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
