//! Fuel: a deterministic budget of interpreter work, one counter per thread.
//!
//! Terrarium's interpreter tier runs one RustPython interpreter per thread. The
//! vendored interpreter charges this thread's counter one unit per bytecode
//! instruction it dispatches, and native operations charge it in proportion to their
//! work (items pulled from an iterator, comparisons of a sort, limbs of big-integer
//! arithmetic, bytes of a repeated sequence, steps of the regular-expression engine);
//! Terrarium starts the count before a run and reads it after. [`CountingAlloc`], the
//! global allocator of every Terrarium program, charges what the snippet's code
//! allocates in large pieces. What is charged, and how much, depends only on the
//! code and its inputs, never on time or load.
//!
//! # Security
//! The counter lives in Rust thread-local state: no Python object refers to it, so a
//! snippet can only spend it. Once it is negative the run is out of fuel, and stays
//! so until the next [`start`]: every further instruction raises again (the
//! interpreter's side), so no handler a snippet writes can continue the run.

use std::cell::Cell;

/// The budget of a run that has none: large enough never to run out, small enough
/// that no sum of charges overflows.
pub const UNLIMITED: i64 = i64::MAX / 4;

thread_local! {
    /// Units left; negative once the budget is spent.
    static LEFT: Cell<i64> = const { Cell::new(UNLIMITED) };
    /// The budget [`start`] granted.
    static GRANTED: Cell<i64> = const { Cell::new(UNLIMITED) };
    /// While a [`pause`] holds: the run's own units left, put aside.
    static PUT_ASIDE: Cell<Option<i64>> = const { Cell::new(None) };
    /// Whether [`CountingAlloc`] charges this thread (see [`charge_allocations`]).
    static ALLOCATIONS: Cell<bool> = const { Cell::new(false) };
}

/// Starts counting afresh on this thread with `budget` units (`None`: no limit, the
/// count is still kept).
pub fn start(budget: Option<u64>) {
    let granted = budget.map_or(UNLIMITED, |b| i64::try_from(b).unwrap_or(UNLIMITED).min(UNLIMITED));
    LEFT.with(|l| l.set(granted));
    GRANTED.with(|g| g.set(granted));
    PUT_ASIDE.with(|p| p.set(None));
}

/// Charges one unit (a dispatched instruction). `true` when the budget is spent.
#[inline(always)]
pub fn tick() -> bool {
    LEFT.with(|l| {
        let left = l.get() - 1;
        l.set(left);
        left < 0
    })
}

/// Charges `units` of native work. `true` while fuel is left after the charge.
#[inline]
pub fn charge(units: u64) -> bool {
    if units == 0 {
        return !exhausted();
    }
    LEFT.with(|l| {
        // Past any budget (even an unlimited one), yet far from overflowing.
        let units = i64::try_from(units).unwrap_or(i64::MAX).min(2 * UNLIMITED);
        let left = l.get().saturating_sub(units).max(-UNLIMITED);
        l.set(left);
        left >= 0
    })
}

/// Whether this thread's budget is spent.
#[inline]
pub fn exhausted() -> bool {
    LEFT.with(|l| l.get() < 0)
}

/// Units left (0 once spent).
pub fn left() -> u64 {
    LEFT.with(|l| u64::try_from(l.get()).unwrap_or(0))
}

/// Units used since [`start`]: at most the budget (a run that ran out used all of it,
/// whatever the last charge would have cost).
pub fn used() -> u64 {
    let granted = GRANTED.with(Cell::get);
    let left = LEFT.with(Cell::get).max(0);
    u64::try_from(granted - left).unwrap_or(0)
}

/// Units of work an import may do uncharged (see [`pause`]).
pub const IMPORT_ALLOWANCE: i64 = 20_000_000;

/// While a module's import-time code runs (see [`pause`]).
#[must_use = "the count resumes when this is dropped"]
pub struct Paused {
    /// Whether this guard put the run's units aside (an outer pause, or a run out
    /// of fuel, leaves the count as it is).
    active: bool,
}

/// Stops charging the run for work up to [`IMPORT_ALLOWANCE`] units, until the guard
/// is dropped: used for the first import of a module in an interpreter, whose cost
/// would otherwise depend on whether an earlier run had already imported it. Work
/// past the allowance is charged in full when the guard drops. A run already out of
/// fuel stays out. Code of the run's own that runs inside (see [`charge_own`]) is
/// charged as ever.
pub fn pause() -> Paused {
    let left = LEFT.with(Cell::get);
    if left < 0 || PUT_ASIDE.with(Cell::get).is_some() {
        return Paused { active: false };
    }
    PUT_ASIDE.with(|p| p.set(Some(left)));
    LEFT.with(|l| l.set(IMPORT_ALLOWANCE));
    Paused { active: true }
}

/// Whether a [`pause`] holds.
#[inline]
pub fn paused() -> bool {
    PUT_ASIDE.with(Cell::get).is_some()
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let own = PUT_ASIDE.with(|p| p.take()).unwrap_or(0);
        LEFT.with(|l| {
            let during = l.get();
            // Within the allowance: free. Past it: everything it did is charged.
            let restored = if during >= 0 { own } else { own - (IMPORT_ALLOWANCE - during) };
            l.set(restored.max(-UNLIMITED));
        });
    }
}

/// While the run's own code runs inside a pause (see [`charge_own`]).
#[must_use = "the pause resumes when this is dropped"]
pub struct Own {
    /// The pause's allowance left, put aside meanwhile.
    allowance: Option<i64>,
}

/// Charges the run's own budget again, until the guard is dropped, inside a
/// [`pause`]: the interpreter calls it when a frame of the run's own code (a
/// snippet's function called from import-time code, a finalizer) starts there, so
/// that no work of the snippet's is free. Outside a pause it does nothing.
pub fn charge_own() -> Own {
    let Some(own) = PUT_ASIDE.with(|p| p.take()) else { return Own { allowance: None } };
    let allowance = LEFT.with(|l| l.replace(own));
    Own { allowance: Some(allowance) }
}

impl Drop for Own {
    fn drop(&mut self) {
        if let Some(allowance) = self.allowance {
            let own = LEFT.with(|l| l.replace(allowance));
            PUT_ASIDE.with(|p| p.set(Some(own)));
        }
    }
}

/// Allocations of at least this many bytes are charged by [`CountingAlloc`]; smaller
/// ones are the interpreter's own objects, paid for by the instructions that make
/// them.
pub const CHARGED_ALLOCATION: usize = 4096;

/// Units for an allocation of `bytes` made on a thread that counts: one per 64 bytes
/// of an allocation of at least [`CHARGED_ALLOCATION`] bytes, nothing for smaller
/// ones.
#[inline]
pub fn allocation_cost(bytes: usize) -> u64 {
    if bytes < CHARGED_ALLOCATION { 0 } else { (bytes / 64) as u64 }
}

/// While allocations are charged (see [`charge_allocations`]).
#[must_use = "allocations are no longer charged when this is dropped"]
pub struct AllocationsCharged {
    /// Whether they were charged before.
    before: bool,
}

/// Has [`CountingAlloc`] charge this thread's large allocations until the guard is
/// dropped: Terrarium holds it while a snippet's code runs, and not while it
/// compiles the snippet or prepares and reads the run, whose allocations depend on
/// what earlier runs of a reused interpreter left behind rather than on the
/// snippet.
pub fn charge_allocations() -> AllocationsCharged {
    AllocationsCharged { before: ALLOCATIONS.with(|a| a.replace(true)) }
}

impl Drop for AllocationsCharged {
    fn drop(&mut self) {
        ALLOCATIONS.with(|a| a.set(self.before));
    }
}

/// Whether this program installed [`CountingAlloc`] as its global allocator (found by
/// making one large allocation; the thread's count is left as it was).
pub fn allocator_installed() -> bool {
    let saved = (LEFT.with(Cell::get), GRANTED.with(Cell::get), PUT_ASIDE.with(Cell::get));
    start(None);
    let probe = {
        let _charged = charge_allocations();
        std::hint::black_box(Vec::<u8>::with_capacity(CHARGED_ALLOCATION))
    };
    let installed = used() > 0;
    drop(probe);
    LEFT.with(|l| l.set(saved.0));
    GRANTED.with(|g| g.set(saved.1));
    PUT_ASIDE.with(|p| p.set(saved.2));
    installed
}

/// The system allocator, charging this thread's fuel for every large allocation
/// ([`allocation_cost`]; growing one past [`CHARGED_ALLOCATION`] by `realloc` is
/// charged one unit per 64 bytes it grows by) while a [`charge_allocations`] guard
/// holds on that thread.
///
/// Whatever native code a snippet reaches that makes a large string, list, dict or
/// buffer (`str(L)`, `S + S`, a slice, `str.replace`, `format` padding, a dict copy)
/// allocates its result, so this charges all of them in proportion to their size
/// without a charge at each site. The charge cannot raise inside the allocator: it
/// leaves the budget spent, and the next instruction raises. A program installs it
/// with `#[global_allocator]` (Terrarium's binary, its Python extension and its
/// tests do); without it, only the interpreter's own charges count.
pub struct CountingAlloc;

#[allow(unsafe_code, reason = "a GlobalAlloc is an unsafe trait; every call is passed on to System")]
mod counting {
    use super::{CHARGED_ALLOCATION, CountingAlloc, allocation_cost, charge};
    use std::alloc::{GlobalAlloc, Layout, System};

    // SAFETY: every call is passed on unchanged to `System`, which upholds the
    // `GlobalAlloc` contract; the charge only touches a `const`-initialised
    // thread-local `Cell` with no destructor, which neither allocates nor can be
    // gone while the thread runs.
    unsafe impl GlobalAlloc for CountingAlloc {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            charge_for(layout.size());
            // SAFETY: the caller's contract for `alloc` is `System`'s.
            unsafe { System.alloc(layout) }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            charge_for(layout.size());
            // SAFETY: the caller's contract for `alloc_zeroed` is `System`'s.
            unsafe { System.alloc_zeroed(layout) }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract for `dealloc` is `System`'s, and every
            // pointer this allocator hands out came from `System`.
            unsafe { System.dealloc(ptr, layout) }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if new_size >= CHARGED_ALLOCATION && new_size > layout.size() && charged() {
                charge(((new_size - layout.size()) / 64) as u64);
            }
            // SAFETY: the caller's contract for `realloc` is `System`'s, and `ptr`
            // came from `System`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[inline]
    fn charge_for(bytes: usize) {
        if bytes >= CHARGED_ALLOCATION && charged() {
            charge(allocation_cost(bytes));
        }
    }

    #[inline]
    fn charged() -> bool {
        super::ALLOCATIONS.with(std::cell::Cell::get)
    }
}

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_allocations_are_charged_by_size_and_small_ones_are_not() {
        start(None);
        let outside: Vec<u8> = Vec::with_capacity(64 * 1024);
        assert_eq!(used(), 0, "nothing is charged outside a charge_allocations guard");
        let _charged = charge_allocations();
        let small: Vec<Box<[u8; 64]>> = (0..10).map(|_| Box::new([0u8; 64])).collect();
        assert_eq!(used(), 0, "small allocations are free");
        let mut big: Vec<u8> = Vec::with_capacity(64 * 1024);
        assert_eq!(used(), 1024, "one unit per 64 bytes");
        big.reserve_exact(128 * 1024);
        assert_eq!(used(), 2048, "growing by realloc is charged for the growth");
        let zeroed = vec![0u8; 8192];
        assert_eq!(used(), 2048 + 128);
        drop((small, big, zeroed, outside));
        assert_eq!(used(), 2048 + 128, "freeing gives nothing back");
        assert!(allocator_installed());
        assert_eq!(used(), 2048 + 128, "looking leaves the count alone");
        start(Some(100));
        let over: Vec<u8> = Vec::with_capacity(64 * 1024);
        assert!(exhausted(), "an allocation past the budget leaves it spent");
        drop(over);
    }

    #[test]
    fn a_budget_runs_out_at_its_last_unit_and_stays_out() {
        start(Some(3));
        assert!(!tick() && !tick() && !tick());
        assert_eq!(used(), 3);
        assert!(tick(), "the fourth unit is past a budget of 3");
        assert!(exhausted());
        assert!(!charge(0), "spent stays spent");
        let _p = pause();
        assert!(exhausted(), "a pause does not revive a spent budget");
        assert_eq!(used(), 3, "a run that ran out used its whole budget");
    }

    #[test]
    fn without_a_budget_the_count_is_kept() {
        start(None);
        for _ in 0..10 {
            assert!(!tick());
        }
        assert!(charge(5));
        assert_eq!(used(), 15);
    }

    #[test]
    fn a_pause_is_free_within_its_allowance_and_charged_past_it() {
        start(Some(100));
        {
            let _p = pause();
            assert!(charge(1_000));
        }
        assert_eq!(used(), 0);
        {
            let _p = pause();
            assert!(!charge(u64::try_from(IMPORT_ALLOWANCE).unwrap_or(0) + 10));
        }
        assert!(exhausted(), "past the allowance, the import's whole work is charged");
    }

    #[test]
    fn the_runs_own_code_inside_a_pause_is_charged() {
        start(Some(100));
        {
            let _p = pause();
            assert!(paused());
            assert!(charge(1_000), "the import's own work is free");
            {
                let _own = charge_own();
                assert!(!paused());
                assert!(charge(60));
            }
            assert!(paused());
            {
                let _own = charge_own();
                assert!(!charge(60), "the run's own work inside the import spends its budget");
            }
        }
        assert!(exhausted());
        assert_eq!(used(), 100);
    }

    #[test]
    fn huge_charges_do_not_overflow() {
        start(Some(u64::MAX));
        assert!(!charge(u64::MAX));
        assert!(!charge(u64::MAX));
        assert!(exhausted());
        start(Some(1));
        assert_eq!(left(), 1);
    }
}
