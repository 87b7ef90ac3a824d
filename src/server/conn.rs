//! A connection's socket with a deadline on every stalled write.
//!
//! hyper times out a client that is slow to send headers, but once a reply is being
//! written nothing does: a client that pipelines requests and never reads the
//! replies keeps its connection, and its descriptor, for as long as it likes.
//!
//! # Security invariant
//! A write (or flush) that makes no progress for [`WRITE_STALL`] fails, which ends
//! the connection; with the server's connection cap this bounds the descriptors
//! clients that do not read can hold, and for how long.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a write may wait for the client to read.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// `inner` whose writes fail after [`WRITE_STALL`] without progress.
pub struct Deadlined<T> {
    inner: T,
    stall: Duration,
    /// Started when a write first returned `Pending`; cleared by any progress.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Deadlined<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, stall: Duration) -> Deadlined<T> {
        Deadlined { inner, stall, timer: None }
    }

    /// `Pending` stays pending until the timer fires, then the write fails.
    fn stalled<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.timer = None;
            return r;
        }
        let stall = self.stall;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", stall.as_secs_f64()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

impl<T: AsyncRead + Unpin> AsyncRead for Deadlined<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlined<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stalled(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stalled(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.stalled(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.stalled(cx, r)
    }
}

/// The most connections served at once: `wanted`, kept 64 below the process's
/// descriptor limit (the audit log, the zygote's sockets and the tiers need some).
pub fn connection_cap(wanted: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    #[allow(unsafe_code, reason = "getrlimit has no safe wrapper in std")]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    if rc != 0 {
        return wanted.min(256);
    }
    let room = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX).saturating_sub(64).max(16);
    wanted.min(room)
}
