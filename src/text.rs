//! Untrusted text shown to a human: which characters make what is shown differ from
//! what runs, and how to show them so that they cannot.
//!
//! Code under review, command words and reasons that quote them come from whoever
//! submitted the request. Bidirectional controls reorder what a browser or terminal
//! displays (Trojan Source: a branch shown as a comment runs), invisible characters
//! hide text, and terminal control sequences rewrite the line a human reads.
//!
//! # Security invariant
//! [`for_terminal`] output contains no control character and no character
//! [`hidden`] names; the review page renders each hidden character as a visible
//! mark (see `server::review`), and the analysis reports each as a finding.

use std::borrow::Cow;

/// The name of `c` if it reorders or hides text when displayed: the bidirectional
/// controls and every character Unicode marks Default_Ignorable_Code_Point
/// (zero-width and invisible formatting characters, fillers that render as blank,
/// variation selectors, tag characters, musical-symbol formatting, shorthand
/// format controls), reserved ones included.
pub fn hidden(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{034F}' => "COMBINING GRAPHEME JOINER",
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' => "HANGUL FILLER",
        '\u{17B4}' | '\u{17B5}' => "KHMER INHERENT VOWEL",
        '\u{180B}'..='\u{180D}' | '\u{180F}' => "MONGOLIAN FREE VARIATION SELECTOR",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{2060}'..='\u{2065}' => "INVISIBLE FORMATTING CHARACTER",
        '\u{206A}'..='\u{206F}' => "DEPRECATED FORMATTING CHARACTER",
        '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' => "VARIATION SELECTOR",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE",
        '\u{FFF0}'..='\u{FFF8}' => "RESERVED INVISIBLE CHARACTER",
        '\u{FFF9}'..='\u{FFFB}' => "INTERLINEAR ANNOTATION CHARACTER",
        '\u{1BCA0}'..='\u{1BCA3}' => "SHORTHAND FORMAT CONTROL",
        '\u{1D173}'..='\u{1D17A}' => "MUSICAL SYMBOL FORMATTING CHARACTER",
        '\u{E0000}'..='\u{E007F}' => "TAG CHARACTER",
        '\u{E0080}'..='\u{E00FF}' | '\u{E01F0}'..='\u{E0FFF}' => "RESERVED INVISIBLE CHARACTER",
        _ => return None,
    })
}

/// The code points of `s` outside ASCII, as `U+0430 U+0435` (empty when none): how a
/// look-alike letter (Cyrillic `а` for Latin `a`) is named to a human.
pub fn non_ascii_code_points(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii()).map(|c| format!("U+{:04X}", u32::from(c))).collect::<Vec<_>>().join(" ")
}

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
        assert_eq!(hidden('\u{202E}'), Some("RIGHT-TO-LEFT OVERRIDE"));
        assert_eq!(hidden('a'), None);
        // Round 4 of the host review: invisible in a browser, once unmarked.
        for c in ['\u{1D173}', '\u{180B}', '\u{2065}', '\u{FFF0}', '\u{1BCA0}', '\u{E0FFF}'] {
            assert!(hidden(c).is_some(), "U+{:04X}", u32::from(c));
        }
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
