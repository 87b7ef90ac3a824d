//! What a worker sends the host is hostile: the rustpython tier's frames and
//! answers, and the CPython tiers' status reports, decode to a value or an error on
//! any bytes, never a panic, an unbounded allocation or a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium::Tier;
use terrarium::tier::cpython::decode_report;
use terrarium::tier::rustpython::isolated::protocol::{
    ChildAnswer, ChildRequest, FromZygote, ToZygote, answer_complete, parse_answer, read_frame,
};

fuzz_target!(|data: &[u8]| {
    // A child's request socket: complete or not, an answer or last words.
    let complete = answer_complete(data);
    let parsed = parse_answer(data);
    if parsed.is_ok() {
        assert!(complete, "an answer parsed from an incomplete frame");
    }
    // Length-prefixed frames, with the reader's cap.
    let _ = read_frame::<ChildAnswer>(&mut &data[..], 64 * 1024);
    let _ = read_frame::<ChildRequest>(&mut &data[..], 64 * 1024);
    // Control packets.
    let _ = serde_json::from_slice::<FromZygote>(data);
    let _ = serde_json::from_slice::<ToZygote>(data);
    // A CPython run's stderr, with and without the nonce at the front of the input.
    let text = String::from_utf8_lossy(data);
    let nonce = text.get(..8).unwrap_or("00000000");
    for exit in [None, Some(0), Some(137)] {
        let o = decode_report(Tier::Wasm, &text, nonce, exit, data.first().is_some_and(|b| b & 1 == 1));
        assert!(o.stderr.len() <= text.len(), "the report grew stderr");
    }
});
