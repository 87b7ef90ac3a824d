//! Untrusted text shown to a human: which characters make what is shown differ from
//! what runs, and how to show them so that they cannot.
//!
//! Code under review, command words and reasons that quote them come from whoever
//! submitted the request. Bidirectional controls reorder what a browser or terminal
//! displays (Trojan Source: a branch shown as a comment runs), invisible characters
//! hide text, and terminal control sequences rewrite the line a human reads.
//!
//! # Security invariant
//! [`hidden`] names every character that reorders or hides text: the CLI escapes
//! each (`cli::terminal`), the review page renders each as a visible mark (see
//! `server::review`), and the analysis reports each as a finding.

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
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_and_invisible_characters_are_named() {
        assert_eq!(hidden('\u{202E}'), Some("RIGHT-TO-LEFT OVERRIDE"));
        assert_eq!(hidden('a'), None);
        // Round 4 of the host review: invisible in a browser, once unmarked.
        for c in ['\u{1D173}', '\u{180B}', '\u{2065}', '\u{FFF0}', '\u{1BCA0}', '\u{E0FFF}'] {
            assert!(hidden(c).is_some(), "U+{:04X}", u32::from(c));
        }
    }
}
