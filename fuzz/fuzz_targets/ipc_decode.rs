//! What a worker sends the host is hostile: the rustpython tier's frames and
//! answers, and the CPython tiers' status reports, decode to a value or an error on
//! any bytes, never a panic, an unbounded allocation or a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium::Tier;
use terrarium::tier::cpython::decode_report;
use terrarium::tier::rustpython::isolated::protocol::{
    AnswerStream, ChildMessage, ChildRequest, FromZygote, ToZygote, read_frame,
};

fuzz_target!(|data: &[u8]| {
    // A child's answer stream, whole and in two chunks: the same verdict either way,
    // and never past the cap.
    let whole = AnswerStream::new(64 * 1024).push(data);
    let cut = data.len() / 2;
    let mut split = AnswerStream::new(64 * 1024);
    let chunked = split.push(&data[..cut]).and_then(|first| match first {
        Some(a) => Ok(Some(a)),
        None => split.push(&data[cut..]),
    });
    if let (Ok(Some(a)), Ok(b)) = (&whole, &chunked) {
        assert_eq!(Some(a), b.as_ref(), "an answer depends on how the bytes were cut");
    }
    // Length-prefixed frames, with the reader's cap.
    let _ = read_frame::<ChildMessage>(&mut &data[..], 64 * 1024);
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
