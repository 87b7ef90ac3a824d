//! The zygote's memory in transparent huge pages: its code moved into them, its heap
//! advised to use them, once it is warm (see `zygote_main`).
//!
//! A speed measure, not a wall. What it keeps: no mapping is ever writable and
//! executable at once (the code's copy is filled while writable, made
//! read-and-execute, and only then moved over the file's mapping), and children get
//! these pages copy-on-write like the rest of the zygote's memory, so a child's write
//! reaches no other process (tests/escape_interpreter.rs rewrites code in one child
//! and runs ten more).

#![allow(unsafe_code, reason = "memory mapping calls on the zygote's own code and heap")]

use std::io;

use super::sys::check;

/// The size of a transparent huge page, when the kernel hands them out to a range
/// that asks (`always` or `madvise`, not `never` nor a kernel without them) and
/// moving the code into them costs no commit charge per child: under strict
/// overcommit (`vm.overcommit_memory` 2) every fork would be charged the copy's
/// whole size, since it was writable once.
pub fn size_on_request() -> Option<usize> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let offered = read("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_some_and(|s| s.contains("[always]") || s.contains("[madvise]"));
    let strict = read("/proc/sys/vm/overcommit_memory").is_some_and(|s| s.trim() == "2");
    let size = read("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")?.trim().parse::<usize>().ok()?;
    (offered && !strict && size.is_power_of_two() && size > 4096).then_some(size)
}

/// This process's mappings (`/proc/self/maps`): start, end, permissions and name
/// (empty for anonymous memory) of each.
fn own_mappings() -> io::Result<Vec<(usize, usize, String, String)>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.to_string();
            let name = fields.nth(3).unwrap_or_default().to_string();
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?, perms, name))
        })
        .collect())
}

/// Start and end of the executable mapping that holds this function's code.
fn own_text() -> io::Result<(usize, usize)> {
    let here = own_text as fn() -> io::Result<(usize, usize)> as usize;
    own_mappings()?
        .into_iter()
        .find(|(start, end, perms, _)| perms.starts_with("r-x") && *start <= here && here < *end)
        .map(|(start, end, _, _)| (start, end))
        .ok_or_else(|| io::Error::other("no executable mapping holds this process's code"))
}

/// Asks for transparent huge pages of `huge` bytes on the whole ones that fit in
/// this process's heap (`[heap]`, the allocator's main arena), and collapses the
/// pages there now into them (`MADV_COLLAPSE`).
///
/// A forked child then gets those ranges through copies of page-directory entries
/// rather than of ~500 page-table entries each, and one TLB entry covers each;
/// the child's first write into one splits it for that child alone (the kernel's
/// copy-on-write of a shared huge page), so nothing it writes reaches the zygote.
///
/// # Errors
/// Reading `/proc/self/maps`. The advice itself is best effort: a range the
/// kernel declines stays in small pages.
pub fn advise_heap(huge: usize) -> io::Result<()> {
    /// `MADV_COLLAPSE` (Linux 6.1), not in every libc crate release.
    const MADV_COLLAPSE: libc::c_int = 25;
    for (start, end, perms, name) in own_mappings()? {
        if perms != "rw-p" || name != "[heap]" {
            continue;
        }
        let (from, to) = (start.next_multiple_of(huge), end / huge * huge);
        if to <= from {
            continue;
        }
        let (at, len) = (from as *mut libc::c_void, to - from);
        // SAFETY: [from, to) lies inside this process's heap mapping; advice changes
        // no content (a collapse copies the pages into a huge page in place).
        unsafe {
            libc::madvise(at, len, libc::MADV_HUGEPAGE);
            libc::madvise(at, len, MADV_COLLAPSE);
        }
    }
    Ok(())
}

/// Replaces the mapping of this binary's code by an anonymous copy in transparent
/// huge pages of `huge` bytes.
///
/// A forked child then shares the code through a few page-directory entries that
/// `fork` copies, instead of faulting each page of the file back in (`fork` copies
/// no page table of a file mapping) and unmapping them all again at its exit. The
/// copy is writable only while it is filled, and executable only after it stops
/// being writable; it holds the same bytes at the same addresses, so the code
/// running (this function's callers included) goes on unchanged.
///
/// # Errors
/// The system calls' errors. Up to the final move the code mapping is left as it
/// was; the move itself unmaps the old code before it moves the copy in, so if the
/// kernel fails it there (out of memory for page tables), this process has no code
/// left and dies of it when the call returns. For the zygote that is a zygote that
/// died, which its supervisor replaces.
pub fn move_code(huge: usize) -> io::Result<()> {
    let (start, end) = own_text()?;
    let len = end - start;
    // One huge page more than the code, so that the copy can start at the same
    // offset within a huge page as the code does: the huge pages then stay whole
    // when the copy is moved into place.
    // SAFETY: a new private anonymous mapping; no existing memory is touched.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + huge,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let raw = raw as usize;
    let copy = raw + (start % huge + huge - raw % huge) % huge;
    let unmap = |from: usize, to: usize| {
        if to > from {
            // SAFETY: [from, to) lies in the mapping made above, which nothing refers to.
            unsafe { libc::munmap(from as *mut libc::c_void, to - from) };
        }
    };
    unmap(raw, copy);
    unmap(copy + len, raw + len + huge);
    // SAFETY: [copy, copy + len) is the new mapping; advice changes no content. A
    // kernel that declines only leaves it in small pages.
    unsafe { libc::madvise(copy as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    // SAFETY: the source is this binary's code mapping, readable for `len` bytes;
    // the destination the new writable mapping of the same length; they are distinct.
    unsafe { std::ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, len) };
    // SAFETY: the copy's own range, made read-and-execute (no longer writable).
    if let Err(e) = check(unsafe { libc::mprotect(copy as *mut libc::c_void, len, libc::PROT_READ | libc::PROT_EXEC) })
    {
        unmap(copy, copy + len);
        return Err(e);
    }
    // SAFETY: moves the copy over the code mapping in one step (the old mapping is
    // unmapped by the move). Every byte is where it was, and position-independent
    // code holds no absolute address of the mapping, so the code running now and
    // every return address on the stack stay valid. The process is single-threaded
    // (the zygote), so no other thread executes this range meanwhile.
    let moved = unsafe {
        libc::mremap(
            copy as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            start as *mut libc::c_void,
        )
    };
    if moved == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        unmap(copy, copy + len);
        return Err(e);
    }
    Ok(())
}
