//! Standard streams that live as long as a session's instance: the host feeds stdin
//! a cell at a time and drains stdout and stderr while the guest writes them.
//! (wasmtime's memory pipes cannot be drained and trap once full, so a long-lived
//! instance cannot use them.)
//!
//! Writes never block. Output is taken only inside a cell: from the moment the
//! guest has read all of the cell's input ([`Io::begin`]) until the host has the
//! report ([`Io::shut`]), and then only up to the cell's allowance (its
//! `max_output` plus room for the prelude's markers). A write past the allowance is
//! cut and flagged ([`Drained::over`]); a write outside a cell is dropped and
//! flagged ([`Drained::stray`]); either traps the instance. Reads block until the
//! host feeds input or closes the streams.
//!
//! # Security invariant
//! Host memory held for a guest's output is bounded by what the host allowed,
//! whatever the guest writes; nothing the guest writes outside a cell is kept or
//! passed on, and the attempt is visible to the host whenever it happens (code a
//! cell left behind its report cannot slip output into the next cell before that
//! cell has even been read). Once the host has closed the streams ([`Io::close`])
//! every read is the end of input and every write traps: an instance that is being
//! stopped can neither wait for more input nor write on.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// The most one write may offer at once (what `check_write` permits).
const PERMIT: usize = 64 * 1024;
const STDOUT: usize = 0;
const STDERR: usize = 1;

/// How an instance ended, as its thread saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Exit {
    /// It could not be set up or instantiated (a host fault).
    Setup(String),
    /// It used up its fuel.
    OutOfFuel,
    /// Its window closed (the deadline, or the host stopped it).
    Interrupted,
    /// It exited with this code (or returned from `_start`: 0).
    Code(i32),
    /// It trapped otherwise (a failed write included).
    Trapped(String),
}

#[derive(Default)]
struct State {
    input: BytesMut,
    /// Set by the host: reads see the end of input, writes trap.
    closed: bool,
    /// stdout and stderr: written and not drained yet.
    written: [Vec<u8>; 2],
    /// A cell is open for output (once its input is read).
    open: bool,
    /// What each stream may still take.
    room: [usize; 2],
    /// A write went past its room.
    over: bool,
    /// A write came outside a cell.
    stray: bool,
    /// The current cell's input has not been read from yet.
    fresh: bool,
    exit: Option<Exit>,
    /// The guest, waiting for input.
    reader: Option<Waker>,
    /// Since when the guest has been blocked waiting for input (it runs no code
    /// then); `None` while it runs.
    parked: Option<std::time::Instant>,
}

/// One instance's standard streams, shared by the host and the guest's handles.
pub(super) struct Io {
    state: Mutex<State>,
    /// Cells the guest has started to read.
    delivered: std::sync::atomic::AtomicU64,
    /// Woken when the guest writes or its instance ends (one waiter: the host).
    host: tokio::sync::Notify,
}

/// What the guest wrote since the last drain, and how things stand.
pub(super) struct Drained {
    pub out: Vec<u8>,
    pub err: Vec<u8>,
    /// A write was refused for want of room (since the last [`Io::begin`]).
    pub over: bool,
    /// A write was refused outside a cell (since the last [`Io::begin`]).
    pub stray: bool,
    /// How the instance ended, once it has.
    pub exit: Option<Exit>,
}

impl Drained {
    /// Whether the guest wrote anything or its instance ended.
    pub fn anything(&self) -> bool {
        self.over || self.stray || self.exit.is_some() || !self.out.is_empty() || !self.err.is_empty()
    }
}

impl Io {
    /// Streams that let the guest write `room` bytes to each of stdout and stderr
    /// as it starts (until [`Io::shut`]).
    pub fn new(room: usize) -> Arc<Io> {
        let state = State { open: true, room: [room, room], ..State::default() };
        Arc::new(Io { state: Mutex::new(state), delivered: Default::default(), host: tokio::sync::Notify::new() })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The guest's stdin, stdout and stderr.
    pub fn guest(self: &Arc<Io>) -> (Stdin, Sink, Sink) {
        (Stdin(self.clone()), Sink { io: self.clone(), which: STDOUT }, Sink { io: self.clone(), which: STDERR })
    }

    /// Starts a cell: feeds `input` on stdin, and once the guest has read all of
    /// it, stdout may take `out` bytes and stderr `err` (until [`Io::shut`]).
    /// Clears the flags of refused writes.
    pub fn begin(&self, input: &[u8], out: usize, err: usize) {
        let reader = {
            let mut s = self.state();
            s.input.extend_from_slice(input);
            (s.open, s.room, s.over, s.stray, s.fresh) = (true, [out, err], false, false, true);
            s.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Feeds the reply to a host call on stdin, inside the current cell (its output
    /// stays open, its allowance as it is).
    pub fn reply(&self, input: &[u8]) {
        let reader = {
            let mut s = self.state();
            s.input.extend_from_slice(input);
            s.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Gives stderr back `n` bytes of allowance (a host call line the host took out
    /// of it: calls do not count against the cell's output).
    pub fn credit_err(&self, n: usize) {
        let mut s = self.state();
        if s.open {
            s.room[STDERR] = s.room[STDERR].saturating_add(n);
        }
    }

    /// Ends the current cell's output: any write from now to the next
    /// [`Io::begin`] is refused.
    pub fn shut(&self) {
        let mut s = self.state();
        (s.open, s.room) = (false, [0, 0]);
    }

    /// Takes what the guest wrote so far.
    pub fn drain(&self) -> Drained {
        let mut s = self.state();
        let [out, err] = std::mem::take(&mut s.written);
        Drained { out, err, over: s.over, stray: s.stray, exit: s.exit.clone() }
    }

    /// Ends input and makes every later write trap.
    pub fn close(&self) {
        let reader = {
            let mut s = self.state();
            s.closed = true;
            s.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Records how the instance ended (called by its thread, last).
    pub fn finish(&self, exit: Exit) {
        self.state().exit = Some(exit);
        self.host.notify_one();
    }

    /// How many cells the guest has started to read (it changes only inside the
    /// guest's read of stdin).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How the instance ended, once it has.
    pub fn exit(&self) -> Option<Exit> {
        self.state().exit.clone()
    }

    /// Waits until the guest writes or its instance ends (or returns at once if
    /// either happened since the last wait).
    pub async fn changed(&self) {
        self.host.notified().await;
    }

    /// A guest's write to stream `which`.
    fn write(&self, which: usize, bytes: &[u8]) -> Result<(), &'static str> {
        let mut s = self.state();
        if s.closed {
            return Err("the session's streams are closed");
        }
        if !s.open || !s.input.is_empty() {
            s.stray = true;
            drop(s);
            self.host.notify_one();
            return Err("output outside a cell");
        }
        let take = bytes.len().min(s.room[which]);
        s.written[which].extend_from_slice(&bytes[..take]);
        s.room[which] -= take;
        let over = take < bytes.len();
        s.over |= over;
        drop(s);
        self.host.notify_one();
        if over { Err("output past what the host allowed") } else { Ok(()) }
    }

    /// A guest's read of up to `size` bytes: `None` at the end of input, empty when
    /// nothing is there yet (`cx` is then woken when something is).
    fn read(&self, size: usize, cx: Option<&mut Context<'_>>) -> Option<Bytes> {
        let mut s = self.state();
        if !s.input.is_empty() {
            if std::mem::take(&mut s.fresh) {
                self.delivered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            s.parked = None;
            let n = size.min(s.input.len());
            return Some(s.input.split_to(n).freeze());
        }
        if s.closed {
            return None;
        }
        if let Some(cx) = cx {
            s.reader = Some(cx.waker().clone());
            self.park(&mut s);
        }
        Some(Bytes::new())
    }

    /// The guest blocks for input: from now on it runs no code until input comes.
    fn park(&self, s: &mut State) {
        if s.parked.is_none() {
            s.parked = Some(std::time::Instant::now());
            self.host.notify_one();
        }
    }

    /// Since when the guest has been blocked waiting for input, if it is.
    pub fn parked(&self) -> Option<std::time::Instant> {
        self.state().parked
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state();
        if !s.input.is_empty() || s.closed {
            return Poll::Ready(());
        }
        s.reader = Some(cx.waker().clone());
        self.park(&mut s);
        Poll::Pending
    }

    fn closed(&self) -> bool {
        self.state().closed
    }
}

/// The guest's stdin.
pub(super) struct Stdin(Arc<Io>);

impl IsTerminal for Stdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for Stdin {
    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        Box::new(Stdin(self.0.clone()))
    }

    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(Stdin(self.0.clone()))
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stdin {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.0.poll_readable(cx)).await;
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for Stdin {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.0.read(size, None).ok_or(StreamError::Closed)
    }
}

impl AsyncRead for Stdin {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.0.read(buf.remaining(), Some(cx)) {
            // The end of input.
            None => Poll::Ready(Ok(())),
            Some(b) if b.is_empty() => Poll::Pending,
            Some(b) => {
                buf.put_slice(&b);
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// The guest's stdout or stderr.
#[derive(Clone)]
pub(super) struct Sink {
    io: Arc<Io>,
    which: usize,
}

impl IsTerminal for Sink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Sink {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Sink {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Sink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.io.write(self.which, &bytes).map_err(StreamError::trap)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.io.closed() { Err(StreamError::trap("the session's streams are closed")) } else { Ok(PERMIT) }
    }
}

impl AsyncWrite for Sink {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(match self.io.write(self.which, buf) {
            Ok(()) => Ok(buf.len()),
            Err(why) => Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, why)),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_allowance_are_cut_flagged_and_refused() {
        let io = Io::new(4);
        let (_, mut out, mut err) = io.guest();
        assert!(out.write(Bytes::from_static(b"abc")).is_ok());
        assert!(out.write(Bytes::from_static(b"de")).is_err(), "one byte of room left");
        assert!(err.write(Bytes::from_static(b"xy")).is_ok());
        let d = io.drain();
        assert_eq!((d.out.as_slice(), d.err.as_slice(), d.over, d.stray), (&b"abcd"[..], &b"xy"[..], true, false));
        // Between cells: nothing may be written.
        io.shut();
        assert!(err.write(Bytes::from_static(b"!")).is_err());
        let d = io.drain();
        assert!(d.stray && d.err.is_empty());
    }

    #[test]
    fn a_cell_takes_output_only_once_its_input_is_read() {
        let io = Io::new(0);
        io.shut();
        let (mut stdin, mut out, _) = io.guest();
        io.begin(b"cell", 10, 10);
        assert!(!io.drain().stray, "the flags start clear");
        assert!(out.write(Bytes::from_static(b"early")).is_err(), "written before the cell was read");
        let d = io.drain();
        assert!(d.stray && d.out.is_empty());
        io.begin(b"", 10, 10);
        assert_eq!(stdin.read(2).ok(), Some(Bytes::from_static(b"ce")));
        assert!(out.write(Bytes::from_static(b"x")).is_err(), "half of the input is still unread");
        assert_eq!(stdin.read(10).ok(), Some(Bytes::from_static(b"ll")));
        io.begin(b"", 10, 10);
        assert!(out.write(Bytes::from_static(b"out")).is_ok());
        assert_eq!(io.drain().out, b"out");
    }

    #[test]
    fn reads_wait_for_input_and_see_the_end_once_closed() {
        let io = Io::new(0);
        let (mut stdin, mut out, _) = io.guest();
        assert_eq!(stdin.read(10).ok(), Some(Bytes::new()), "nothing yet");
        io.begin(b"hello", 0, 0);
        assert_eq!(io.delivered(), 0);
        assert_eq!(stdin.read(3).ok(), Some(Bytes::from_static(b"hel")));
        assert_eq!(io.delivered(), 1, "counted at the cell's first read");
        io.close();
        assert_eq!(stdin.read(10).ok(), Some(Bytes::from_static(b"lo")), "input fed before the end is read");
        assert!(matches!(stdin.read(10), Err(StreamError::Closed)));
        assert!(out.check_write().is_err(), "writes trap once closed");
        io.finish(Exit::Code(0));
        assert_eq!(io.exit(), Some(Exit::Code(0)));
    }
}
