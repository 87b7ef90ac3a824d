//! The end-of-run collection of a reused (embedded) interpreter: everything a run
//! left as garbage is collected before the run ends, so that no finalizer of it runs
//! during another request.

use std::time::Duration;

use rustpython_vm::VirtualMachine;

/// Passes of the end-of-run collection before an interpreter is given up on.
const COLLECTION_PASSES: usize = 8;

/// Collects, at the end of a run on a reused interpreter, everything the run left
/// as garbage, so that no finalizer of it runs during another request (finding F3
/// of issue 17's review). Every generation: a run can make an old object garbage
/// (a cycle it hung on a module's shared state in an earlier run and unhooked in
/// this one). Repeated until a pass leaves nothing new: a finalizer (or what it
/// resurrects) may make new cyclic garbage as it runs, which the pass that ran it
/// did not see, and the pass's own count does not show it (resurrected objects are
/// not counted as collected). A full pass moves every survivor out of the youngest
/// generation, so what is in it afterwards was made during the pass. `false` when
/// passes were still making objects after [`COLLECTION_PASSES`].
pub(super) fn collect_the_runs_garbage(vm: &VirtualMachine) -> bool {
    // Nothing of this interpreter's is tracked (a run that made no container, or
    // only ones freed by their counts): a pass would find no candidate, and would
    // still clear the process-wide method cache entry by entry, which cost more
    // than the rest of a small run.
    if (0..=2).all(|g| vm.state.gc.get_objects(Some(g)).is_empty()) {
        return true;
    }
    let (mut passes, mut busy) = (0, 0);
    let done = loop {
        if passes >= COLLECTION_PASSES {
            break false;
        }
        let pass = vm.state.gc.collect_force(2);
        // The collector is process-wide: while another interpreter's thread is
        // collecting, a pass returns at once, having done nothing (and timed
        // nothing). Try again shortly; an interpreter that never gets its pass is
        // not reused.
        if pass.duration == 0.0 {
            busy += 1;
            if busy > COLLECTOR_BUSY_TRIES {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        passes += 1;
        // A pass with no candidates found nothing unreachable, so ran no finalizer
        // and made nothing (and skips the scan of the youngest generation).
        if pass.candidates == 0 || vm.state.gc.get_objects(Some(0)).is_empty() {
            break true;
        }
    };
    if done {
        // What survived is reachable from state that outlives runs (a module's
        // attributes): frozen, so that no later pass walks it again and the check
        // above stays about the next run's own objects. A cycle of it that a later
        // run unhooks is never collected (nor finalized): a leak bounded by what
        // trusted callers keep in modules, never another run's code running.
        vm.state.gc.freeze();
    }
    done
}

/// Times a pass may find the collector busy with another interpreter's collection.
const COLLECTOR_BUSY_TRIES: usize = 400;
