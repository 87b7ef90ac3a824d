//! Change sets as people read them: a unified diff of each text file, and the
//! size and hash of each binary one.

use std::fmt::Write as _;

use super::manifest::{Action, Change, Entry, Kind};

/// Files larger than this are shown by size and hash, not line by line.
pub const TEXT_LIMIT: u64 = 1 << 20;

/// The unified diff of `changes`, each side's content read by `old` and `new`
/// (`None`: not shown as text); at most `limit` bytes, then a line saying it was
/// cut.
pub fn unified(
    changes: &[Change],
    old: &dyn Fn(&Entry) -> Option<Vec<u8>>,
    new: &dyn Fn(&Entry) -> Option<Vec<u8>>,
    limit: usize,
) -> String {
    render(changes, &|c, newer| if newer { c.new.as_ref().and_then(new) } else { c.old.as_ref().and_then(old) }, limit)
}

/// [`unified`], the new side read by path.
pub(super) fn unified_with(
    changes: &[Change],
    old: &dyn Fn(&Entry) -> Option<Vec<u8>>,
    new: &dyn Fn(&str) -> Option<Vec<u8>>,
    limit: usize,
) -> String {
    render(changes, &|c, newer| if newer { new(&c.path) } else { c.old.as_ref().and_then(old) }, limit)
}

fn render(changes: &[Change], content: &dyn Fn(&Change, bool) -> Option<Vec<u8>>, limit: usize) -> String {
    let mut out = String::new();
    for c in changes {
        if out.len() >= limit {
            let _ = writeln!(out, "… (diff cut at {limit} bytes; {} changes in all)", changes.len());
            break;
        }
        let kind = |e: &Option<Entry>| e.as_ref().map(|e| e.kind);
        if kind(&c.old) == Some(Kind::Dir) || kind(&c.new) == Some(Kind::Dir) {
            let what = match c.action {
                Action::Added => "new directory".to_string(),
                Action::Deleted => "directory removed".to_string(),
                _ => describe_mode(c),
            };
            let _ = writeln!(out, "{}: {what}", c.path);
            continue;
        }
        if c.action == Action::Mode {
            let _ = writeln!(out, "{}: {}", c.path, describe_mode(c));
            continue;
        }
        let text = |newer: bool| {
            let side = if newer { &c.new } else { &c.old };
            match side {
                None => Some(String::new()),
                Some(_) => {
                    content(c, newer).and_then(|b| if b.contains(&0) { None } else { String::from_utf8(b).ok() })
                }
            }
        };
        match (text(false), text(true)) {
            (Some(a), Some(b)) => {
                let old_name = if c.old.is_some() { format!("a/{}", c.path) } else { "/dev/null".into() };
                let new_name = if c.new.is_some() { format!("b/{}", c.path) } else { "/dev/null".into() };
                let diff = similar::TextDiff::from_lines(&a, &b);
                let body = diff.unified_diff().context_radius(3).header(&old_name, &new_name).to_string();
                if body.is_empty() {
                    // Same text, e.g. an empty file added.
                    let _ = writeln!(out, "{}: {} (empty)", c.path, action_word(c.action));
                } else {
                    out.push_str(&body);
                    if !body.ends_with('\n') {
                        out.push('\n');
                    }
                }
            }
            _ => {
                let side = |e: &Option<Entry>| match e {
                    Some(e) => format!("{} bytes sha256 {}", e.size, e.sha256.as_deref().unwrap_or("-")),
                    None => "nothing".into(),
                };
                let _ = writeln!(out, "{}: binary or large, {} -> {}", c.path, side(&c.old), side(&c.new));
            }
        }
    }
    if out.len() > limit + 256 {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        let _ = writeln!(out, "\n… (diff cut at {limit} bytes; {} changes in all)", changes.len());
    }
    out
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Added => "added",
        Action::Modified => "modified",
        Action::Mode => "mode changed",
        Action::Deleted => "deleted",
    }
}

fn describe_mode(c: &Change) -> String {
    let m = |e: &Option<Entry>| e.as_ref().map_or_else(|| "-".to_string(), |e| format!("{:o}", e.mode));
    format!("mode {} -> {}", m(&c.old), m(&c.new))
}
