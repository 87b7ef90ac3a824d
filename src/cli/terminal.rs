//! Text from a sandbox or a request printed on the operator's terminal.
//!
//! # Security invariant
//! [`for_terminal`] output contains no control character and no character
//! [`hidden`] names, so that a snippet's output, a command word or a reason quoting
//! one cannot rewrite the line a human reads, set the title or write the clipboard.

use std::borrow::Cow;

use crate::text::hidden;

/// Whether `c` changes a terminal's state or the line shown rather than printing:
/// C0 and C1 controls and DEL (tab and newline included, since a word or reason
/// printed on one line must stay on it).
fn control(c: char) -> bool {
    c.is_control()
}

/// `s` safe to print on a terminal: every control character and every [`hidden`]
/// character written as `\u{XXXX}`, and backslashes doubled so that the escape
/// cannot be forged.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    escape_for_terminal(s, false)
}

/// [`for_terminal`] for a message that may span lines: newlines, tabs and
/// backslashes are kept.
pub fn lines_for_terminal(s: &str) -> Cow<'_, str> {
    escape_for_terminal(s, true)
}

/// A message (an exception's, a host error's) for one `terrarium: …` line on a
/// terminal: [`lines_for_terminal`], with every line after the first indented, so
/// that a message cannot forge a line of Terrarium's own.
pub fn message_for_terminal(s: &str) -> String {
    lines_for_terminal(s).replace('\n', "\n    ")
}

/// Text a sandbox produced (a snippet's output, stored code) for `out`: as it is
/// when `out` is not a terminal (a pipe or file gets the exact bytes), with
/// [`lines_for_terminal`] when it is, so that escape sequences in it cannot drive
/// the terminal (rewrite lines, set the title, write the clipboard).
pub fn for_stream<'s>(s: &'s str, terminal: bool) -> Cow<'s, str> {
    if terminal { lines_for_terminal(s) } else { Cow::Borrowed(s) }
}

fn escape_for_terminal(s: &str, keep_lines: bool) -> Cow<'_, str> {
    let kept = |c: char| keep_lines && (c == '\n' || c == '\t');
    let bad = |c: char| !kept(c) && (control(c) || hidden(c).is_some());
    // One-line words double their backslashes, so that an escape cannot be forged;
    // a message keeps them as written.
    let doubled = |c: char| !keep_lines && c == '\\';
    if !s.chars().any(|c| doubled(c) || bad(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if doubled(c) {
            out.push_str("\\\\");
        } else if bad(c) {
            out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text (as `serde_json` writes it, compact or pretty) safe to print on a
/// terminal: every control and [`hidden`] character, which `serde_json` leaves raw
/// only inside strings (C1 controls, DEL, bidi), written as a JSON `\uXXXX`
/// escape. Newlines and tabs are the pretty printer's whitespace and stay. The
/// result parses to the same value.
pub fn json_for_terminal(json: &str) -> Cow<'_, str> {
    // U+2028 and U+2029 are line breaks to some terminals and viewers.
    let bad =
        |c: char| c != '\n' && c != '\t' && (control(c) || hidden(c).is_some() || c == '\u{2028}' || c == '\u{2029}');
    if !json.chars().any(bad) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if bad(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h16_terminal_text_has_no_controls_and_no_hidden_characters() {
        assert_eq!(for_terminal("ls -la"), "ls -la");
        let evil = "rm\u{1b}[2K\rallowed: ls\u{202E}x\u{9b}\\u{1B}";
        let shown = for_terminal(evil);
        assert!(!shown.chars().any(|c| c.is_control() || hidden(c).is_some()), "{shown}");
        assert_eq!(shown, "rm\\u{001B}[2K\\u{000D}allowed: ls\\u{202E}x\\u{009B}\\\\u{1B}");
        let v = serde_json::json!({"argv": ["ls\u{9b}2K", "\u{202E}x\u{E0041}"]});
        let text = serde_json::to_string(&v).expect("json");
        let shown = json_for_terminal(&text);
        assert!(!shown.chars().any(|c| c.is_control() || hidden(c).is_some()), "{shown}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).expect("still JSON"), v);
        assert_eq!(message_for_terminal("boom\nterrarium: ok: fine"), "boom\n    terrarium: ok: fine");
        assert_eq!(for_stream("a\u{1b}]52;c;x\u{7}", true), "a\\u{001B}]52;c;x\\u{0007}");
        assert_eq!(for_stream("a\u{1b}", false), "a\u{1b}");
        let pretty = serde_json::to_string_pretty(&v).expect("json");
        let shown = json_for_terminal(&pretty);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).expect("pretty JSON"), v);
    }
}
