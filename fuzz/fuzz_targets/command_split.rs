//! The system-command validator never panics on any line, and what it accepts
//! survives a round trip: its words, each single-quoted and joined, split back to
//! the same words (so no word can carry a shell construct past it).

#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium::command::{CommandRules, Decision, decide, quote_words, split};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    if let Ok(words) = split(line) {
        assert!(!words.is_empty(), "an accepted line has a program");
        let again = split(&quote_words(&words)).expect("quoted words split");
        assert_eq!(words, again, "round trip changed the words of {line:?}");
    }
    match decide(line, &CommandRules::default_rules()) {
        Decision::Allow { .. } => panic!("the default rules allow nothing, yet {line:?} was allowed"),
        Decision::Deny { reason } | Decision::NeedsApproval { reason, .. } => assert!(!reason.is_empty()),
    }
});
