//! Guest sleeps end by the run's deadline.
//!
//! The epoch deadline interrupts wasm code, not a host call: a guest blocked in
//! WASI's `poll_oneoff` (`time.sleep(3600)`) would hold its thread and instance
//! slot for the whole sleep. So the guest's `poll_oneoff` is Terrarium's own
//! ([`poll_oneoff`]): clock subscriptions wait no later than the deadline, and
//! descriptor subscriptions are reported ready at once (every descriptor a guest
//! has is a memory pipe or a file, which never block in `poll`, or a session's
//! stdin, which has nothing between cells anyway; a read that then has nothing to
//! read returns, or waits for a session's next cell, as it would). A wait that
//! would outlast the deadline sleeps until the deadline and ends the run there with
//! the same trap as the epoch check, so the run is a `timeout`.
//!
//! Absolute timeouts are converted with the clocks the guest itself sees: the
//! monotonic clock is [`GuestClock`] (installed in every instance), the real-time
//! clock is the host's.
//!
//! A sleep also ends, with the same trap, as soon as the run must stop (its
//! future was dropped by an emergency stop or a caller gone, its session ended):
//! it is taken in slices of at most 10 ms.
//!
//! # Security invariant
//! No WASI call can keep a run past its deadline, or past its stop, by sleeping (the red-team attack
//! `sleep_forever` found the gap; `tests/wasm.rs::sleep_forever` keeps it closed).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::{Caller, Extern};

/// Layout of WASI preview 1's `subscription` (48 bytes) and `event` (32 bytes).
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const SUB_TAG: usize = 8;
const SUB_CLOCK_ID: usize = 16;
const SUB_TIMEOUT: usize = 24;
const SUB_FLAGS: usize = 40;
const EVENT_ERROR: usize = 8;
const EVENT_TYPE: usize = 10;
const EVENT_NBYTES: usize = 16;
const TAG_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const FLAG_ABSTIME: u16 = 1;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
/// More subscriptions than any libc asks for at once.
const MAX_SUBSCRIPTIONS: u32 = 4096;

/// When the run in a store must end.
pub(super) enum Due {
    /// Not known yet (a warm instance before its request) or never.
    Unset,
    /// A fixed instant (cold runs).
    At(Instant),
    /// Set to (arrival, due) when the request arrives (warm instances).
    Window(Arc<Mutex<Option<(Instant, Instant)>>>),
}

impl Due {
    fn remaining(&self) -> Option<Duration> {
        let due = match self {
            Due::Unset => return None,
            Due::At(t) => *t,
            Due::Window(w) => w.lock().ok().and_then(|w| *w).map(|(_, due)| due)?,
        };
        Some(due.saturating_duration_since(Instant::now()))
    }
}

/// The guest's monotonic clock: nanoseconds since its instance was created, from a
/// base the clamping shim can read.
#[derive(Clone, Copy)]
pub(super) struct GuestClock(pub Instant);

impl GuestClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl wasmtime_wasi::HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.now_ns()
    }
}

/// Whether a run must stop now (its future was dropped, its session ended, its
/// workspace copy went past the quota): a sleeping guest wakes and traps.
pub(super) type Halted = Option<Arc<dyn Fn() -> bool + Send + Sync>>;

/// What the shim needs from the store's data.
pub(super) trait SleepState {
    fn due(&self) -> &Due;
    fn clock(&self) -> GuestClock;
    fn halted(&self) -> Halted;
}

/// Sleeps `d` in slices of at most 10 ms; `true` as soon as `halted` says so.
fn nap(d: Duration, halted: &Halted) -> bool {
    let until = Instant::now() + d;
    loop {
        if halted.as_ref().is_some_and(|h| h()) {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// WASI preview 1's `poll_oneoff(in, out, nsubscriptions, nevents_out)`, with every
/// wait ending by the deadline. Returns an errno.
pub(super) fn poll_oneoff<T: SleepState + 'static>(
    mut caller: Caller<'_, T>,
    subs: i32,
    events: i32,
    n: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmtime::Error::msg("the guest exports no memory"));
    };
    let count = match u32::try_from(n) {
        Ok(0) | Err(_) => return Ok(ERRNO_INVAL),
        Ok(c) if c > MAX_SUBSCRIPTIONS => return Ok(ERRNO_INVAL),
        Ok(c) => c as usize,
    };
    let addr = |p: i32| u32::from_ne_bytes(p.to_ne_bytes()) as usize;
    let mut raw = vec![0u8; count * SUBSCRIPTION_SIZE];
    if memory.read(&caller, addr(subs), &mut raw).is_err() {
        return Ok(ERRNO_FAULT);
    }
    let left = caller.data().due().remaining();
    let clock = caller.data().clock();
    let halted = caller.data().halted();
    // Each subscription's wait in ns (0 for a descriptor: ready now).
    let mut waits = Vec::with_capacity(count);
    for sub in raw.chunks_exact(SUBSCRIPTION_SIZE) {
        if sub[SUB_TAG] != TAG_CLOCK {
            waits.push(0);
            continue;
        }
        let id = u32::from_le_bytes(sub[SUB_CLOCK_ID..SUB_CLOCK_ID + 4].try_into().unwrap_or_default());
        let timeout = u64::from_le_bytes(sub[SUB_TIMEOUT..SUB_TIMEOUT + 8].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes(sub[SUB_FLAGS..SUB_FLAGS + 2].try_into().unwrap_or_default());
        let wait = match (id, flags & FLAG_ABSTIME != 0) {
            (CLOCK_REALTIME | CLOCK_MONOTONIC, false) => timeout,
            (CLOCK_REALTIME, true) => {
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                timeout.saturating_sub(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX))
            }
            (CLOCK_MONOTONIC, true) => timeout.saturating_sub(clock.now_ns()),
            _ => return Ok(ERRNO_INVAL),
        };
        waits.push(wait);
    }
    let shortest = waits.iter().copied().min().unwrap_or(0);
    let wanted = Duration::from_nanos(shortest);
    if let Some(left) = left
        && wanted >= left
    {
        // The wait would outlast the run: sleep to the deadline and end the run
        // there, as the epoch check would (never wake the guest early as if its
        // time had come).
        nap(left, &halted);
        return Err(wasmtime::Trap::Interrupt.into());
    }
    if !wanted.is_zero() && nap(wanted, &halted) {
        return Err(wasmtime::Trap::Interrupt.into());
    }
    // Every subscription whose wait is over (at least the shortest one).
    let mut out = Vec::new();
    for (sub, wait) in raw.chunks_exact(SUBSCRIPTION_SIZE).zip(&waits) {
        if *wait > shortest {
            continue;
        }
        let mut event = [0u8; EVENT_SIZE];
        event[..8].copy_from_slice(&sub[..8]);
        event[EVENT_ERROR..EVENT_ERROR + 2].copy_from_slice(&0u16.to_le_bytes());
        // Event types match subscription tags: clock 0, fd_read 1, fd_write 2.
        event[EVENT_TYPE] = sub[SUB_TAG];
        if sub[SUB_TAG] != TAG_CLOCK {
            event[EVENT_NBYTES..EVENT_NBYTES + 8].copy_from_slice(&1u64.to_le_bytes());
        }
        out.extend_from_slice(&event);
    }
    let written = u32::try_from(out.len() / EVENT_SIZE).unwrap_or(u32::MAX);
    if memory.write(&mut caller, addr(events), &out).is_err()
        || memory.write(&mut caller, addr(nevents), &written.to_le_bytes()).is_err()
    {
        return Ok(ERRNO_FAULT);
    }
    Ok(0)
}
