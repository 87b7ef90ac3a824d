//! Terrarium's patch: the interpreter's side of fuel (the counter is
//! `terrarium_fuel`, one per thread).
//!
//! Charged: one unit per dispatched bytecode instruction (`frame.rs`), and native
//! work in proportion to its size, at the places that every route to it passes
//! (specialised instructions and generic calls alike, so that the count does not
//! depend on what the adaptive interpreter has specialised):
//! - one unit per item a native function pulls from an iterator
//!   (`protocol::iter::PyIterIter`: `sum`, `min`, `max`, `sorted`, `list(...)`,
//!   `str.join`, `any`, `all`, ...);
//! - one unit per comparison of a sort (`list.sort`, `sorted`);
//! - one unit per 64 bytes a sequence repetition makes (`str * n`, `bytes * n`,
//!   `list * n`, `tuple * n`, their in-place forms, `deque * n`);
//! - big-integer arithmetic by the sizes of its operands ([`int_cost`]);
//! - one unit per step of the regular-expression engine (`rustpython-sre_engine`);
//! - the `math` module's big-integer functions by their size
//!   (`rustpython-stdlib`, [`square_cost`]);
//! - data scanned, moved or compared: str/bytes searches, comparisons, predicates,
//!   splits and strips by their bytes ([`bytes_cost`]); container comparisons,
//!   `count`/`index`/`in`, hashes of tuples, dict updates and `repr` per item;
//!   list moves per 16 items ([`items_cost`]); hash collisions per key compared;
//!   `int` <-> `str` by the square of its size ([`int_text_cost`]); a float's long
//!   digit strings ([`float_text_cost`]); items filtering iterators skip.
//!
//! Data made in large pieces is charged by Terrarium's allocator, outside this
//! crate (`terrarium_fuel::CountingAlloc`).
//!
//! Out of fuel, [`VirtualMachine::fuel_exhausted_error`] is raised at every
//! instruction until the run has unwound; natives that charge stop at once.

use crate::{PyResult, VirtualMachine, builtins::PyBaseExceptionRef};
use malachite_bigint::BigInt;

impl VirtualMachine {
    /// The exception a run out of fuel raises (a `BaseException`, as the host's
    /// other terminal conditions; catching it does not help: the next instruction
    /// raises it again).
    pub fn fuel_exhausted_error(&self) -> PyBaseExceptionRef {
        self.new_exception_msg(
            self.ctx.exceptions.keyboard_interrupt.to_owned(),
            "terrarium: out of fuel".into(),
        )
    }

    /// Charges `units` of native work; an error once the run is out of fuel.
    #[inline]
    pub fn charge_fuel(&self, units: u64) -> PyResult<()> {
        if terrarium_fuel::charge(units) {
            Ok(())
        } else {
            Err(self.fuel_exhausted_error())
        }
    }
}

/// Charges `units` where an error cannot be raised (inside a closure, or a method
/// given no `vm`): a spent budget raises at the next instruction.
#[inline]
pub fn charge_later(units: u64) {
    terrarium_fuel::charge(units);
}

/// Units for a float written out as `len` characters: nothing for the usual
/// lengths, four per character past 64 (digits of a large precision are computed
/// with big-number arithmetic).
#[inline]
pub fn float_text_cost(len: usize) -> u64 {
    (len.saturating_sub(64) as u64).saturating_mul(4)
}

/// Units for parsing a `str.format` string of `len` bytes: one per 2 (its fields
/// are parsed into objects before any is filled).
#[inline]
pub fn format_text_cost(len: usize) -> u64 {
    (len / 2) as u64
}

/// Units for `n` items a native operation copies, moves or walks without calling
/// Python on them: one per 16.
#[inline]
pub fn items_cost(n: usize) -> u64 {
    (n / 16) as u64
}

/// Units for `bytes` of data a native operation makes or scans: one per 64.
#[inline]
pub fn bytes_cost(bytes: usize) -> u64 {
    (bytes / 64) as u64
}

/// Big-integer operations, by how their work grows.
#[derive(Clone, Copy)]
pub enum IntWork {
    /// Linear in the operands (add, subtract, bitwise, shifts by the result).
    Linear,
    /// Product of the operands' sizes (multiply, divide, remainder).
    Product,
}

/// Units for a big-integer operation on operands of `a` and `b` bits: nothing when
/// both fit in a machine word (the interpreter's fast paths), otherwise one unit
/// per 16 limbs (linear) or per 16 limb products (product).
#[inline]
pub fn int_cost(work: IntWork, a: &BigInt, b: &BigInt) -> u64 {
    let (la, lb) = (a.bits().div_ceil(64), b.bits().div_ceil(64));
    if la <= 1 && lb <= 1 {
        return 0;
    }
    match work {
        IntWork::Linear => (la + lb) / 16,
        IntWork::Product => la.saturating_mul(lb) / 16,
    }
}

/// Units for `base ** exp` (non-negative `exp` that fits in 64 bits): repeated
/// squaring to a result of about `bits(base) * exp` bits costs about the square of
/// its limbs; a power of two is built at its size.
pub fn pow_cost(base: &BigInt, exp: u64) -> u64 {
    let bits = base.bits();
    if bits <= 1 {
        return 0;
    }
    let limbs = bits.saturating_mul(exp).div_ceil(64);
    if limbs <= 1 {
        return 0;
    }
    if base.trailing_zeros() == Some(bits - 1) {
        return limbs / 16;
    }
    limbs.saturating_mul(limbs) / 32
}

/// Units for `pow(base, exp, modulus)`: one square-and-multiply step per bit of the
/// exponent, each about the square of the modulus' limbs.
pub fn modpow_cost(exp: &BigInt, modulus: &BigInt) -> u64 {
    let limbs = modulus.bits().div_ceil(64).max(1);
    limbs.saturating_mul(limbs).saturating_mul(exp.bits()) / 16
}

/// Units for turning `digits` decimal digits into an integer, or an integer of
/// about that many digits into text: quadratic in its limbs.
#[inline]
pub fn int_text_cost(digits: usize) -> u64 {
    square_cost((digits as u64).saturating_mul(10) / 3, 64)
}

/// Units for native big-integer work that grows with the square of a number of
/// `bits` bits (the `math` module's `factorial`, `comb`, `perm` by their result;
/// `gcd`, `lcm`, `isqrt` by their arguments): its limbs squared, divided by `per`.
pub fn square_cost(bits: u64, per: u64) -> u64 {
    let limbs = bits.div_ceil(64);
    if limbs <= 1 {
        return 0;
    }
    limbs.saturating_mul(limbs) / per.max(1)
}
