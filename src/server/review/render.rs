//! The page's HTML, from maud templates: layout, script and style, each item's
//! rendering, and how text from a snippet, a command or a caller is shown.
//!
//! # Security invariant
//! Every piece of text a request brought is spliced as text (`(value)` in a template),
//! which maud escapes; markup is only ever the templates' own, the fixed style and
//! script ([`PreEscaped`]) and the marks [`show`] draws for hidden characters.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::*;

/// Headers every review response carries.
pub(super) fn html(status: StatusCode, page: Markup, nonce: &str) -> Response {
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut r = (status, page.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: with it a browser sends `Origin: null` on the page's own
    // form posts, which `same_origin` must refuse. `same-origin` still sends
    // nothing to another origin.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

pub(super) fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

pub(super) const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}\
h1{font-size:1.4em}.item{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}\
pre{background:#f6f6f6;padding:.6em;overflow:auto}.k{color:#a626a4;font-weight:600}.s{color:#50a14f}\
.c{color:#999;font-style:italic}.n{color:#986801}.o{color:#0184bc}.deny{color:#b00}.warn{color:#a60}\
form{display:inline}button{margin-right:.5em}.meta{color:#666}\
.ltr{unicode-bidi:bidi-override;direction:ltr}pre.code{white-space:pre-wrap;overflow-wrap:anywhere}\
#changed{position:fixed;top:0;left:0;right:0;background:#ffd;border-bottom:1px solid #cc0;padding:.4em;display:none}mark.hidden{background:#fdd;color:#b00;font-weight:600}mark.letter{background:#fe9;color:inherit}\
ol.argv code{background:#f6f6f6;padding:0 .2em;white-space:pre-wrap}";

pub(super) fn layout(title: &str, body: Markup, nonce: &str, fingerprint: &str, pending: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body data-fingerprint=(fingerprint) data-pending=(pending) {
                (body)
                script nonce=(nonce) { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// Keeps the page current without moving anything under the reviewer's hand.
/// When the queue changes, the page reloads by itself only if every pending item
/// it shows is still pending (new items are listed below the ones shown, and
/// decided ones are in their own section below) and the reviewer has been idle for
/// two seconds with no field focused. If a pending item it shows was decided or
/// expired, reloading would move the items below it up, under a resting pointer:
/// the page only shows a notice (fixed, out of the layout) and waits for the
/// reviewer to reload.
pub(super) const SCRIPT: &str = "(function(){var f=document.body.dataset.fingerprint;if(!f)return;var last=Date.now(),state=0;\
var shown=(document.body.dataset.pending||'').split(',').filter(Boolean);\
['mousemove','keydown','mousedown','touchstart','wheel'].forEach(function(e){addEventListener(e,function(){last=Date.now()},true)});\
function busy(){var a=document.activeElement;return Date.now()-last<2000||(a&&a.tagName==='INPUT')}\
function note(t){var n=document.getElementById('changed');if(n){n.textContent=t;n.style.display='block'}}\
function tick(){if(state===2)return;if(state===1){if(!busy())location.reload();return}\
fetch('/review/state',{credentials:'same-origin'}).then(function(r){return r.ok?r.json():null})\
.then(function(j){if(!j||j.fingerprint===f)return;var p=j.pending||[];\
if(shown.some(function(i){return p.indexOf(Number(i))<0})){state=2;\
note('An item on this page was decided or expired: reload the page to see the queue as it is now.');return}\
state=1;note('New items arrived below; the page reloads when you pause.');if(!busy())location.reload()}).catch(function(){})}\
setInterval(tick,1000)})();";

/// The sign-in form. It carries a random value that is also set as a
/// `SameSite=Strict` cookie; a sign-in must present both (H10: a page on another
/// origin cannot sign the reviewer in as someone else, since its POST carries no
/// such cookie).
pub(super) fn login_page(message: &str, status: StatusCode) -> Response {
    let nonce = crate::hex::random(16).unwrap_or_default();
    let check = crate::hex::random(16).unwrap_or_default();
    let body = html! {
        h1 { "Terrarium review" }
        p #message { (message) }
        form method="post" action="/review/login" {
            input type="hidden" name="check" value=(check);
            label { "Token with the approve role " input #token name="token" type="password" autocomplete="off"; }
            " "
            button #login { "Sign in" }
        }
    };
    let mut r = html(status, layout("Terrarium review: sign in", body, &nonce, "", ""), &nonce);
    let c = format!("{LOGIN_COOKIE}={check}; HttpOnly; SameSite=Strict; Path=/review; Max-Age=3600");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The queue's page: who is signed in, the pending items (oldest first, so that a
/// new item lands below what the reviewer is reading) and the recently decided ones.
pub(super) fn queue_page(pending: &[Item], recent: &[Item], csrf: &str, who: &str, now_us: i64) -> Markup {
    html! {
        p #changed { "The queue changed; the page reloads when you pause." }
        h1 { "Terrarium review" }
        p.meta {
            "Signed in as " b #who { (show(who, &Marks::new())) } ". "
            form method="post" action="/review/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button { "Sign out" }
            }
        }
        h2 { "Waiting for a decision (" (pending.len()) ")" }
        @if pending.is_empty() {
            p #empty { "Nothing is waiting." }
        }
        @for item in pending.iter().rev() {
            (render_pending(item, csrf, now_us, who))
        }
        h2 { "Recently decided" }
        @for item in recent {
            (render_decided(item))
        }
    }
}

/// What changes the page: the items, their statuses, whether they have outcomes.
pub(super) fn fingerprint(items: &[Item]) -> String {
    items
        .iter()
        .map(|i| crate::approval::fingerprint_entry(i.id, i.status, i.outcome.is_some()))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn render_pending(item: &Item, csrf: &str, now_us: i64, who: &str) -> Markup {
    let id = item.id;
    let left = (item.deadline_us - now_us).max(0) / 1_000_000;
    let s = &item.subject;
    // One budget of marks for everything the item shows (see [`show`]).
    let marks = Marks::new();
    html! {
        div.item id={ "item-" (id) } {
            h3 { "#" (id) " " (show(&item.kind, &marks)) }
            p { (show(&item.reason, &marks)) }
            p.meta { "Denied automatically in " (left) " s." }
            p.meta {
                "Asked by " b id={ "caller-" (id) } { (show(s["caller"].as_str().unwrap_or("(not recorded)"), &marks)) }
                @if s["scratch"].as_bool() == Some(true) { ", with a writable scratch directory" }
            }
            @if item.kind == "execute" {
                (execute_details(id, s, &marks))
            } @else if item.kind == "function_call" {
                (call_details(id, s, &marks))
            } @else if item.kind == "workspace_change" {
                (workspace_details(id, s, &marks))
            } @else if item.kind == "policy_change" {
                (hidden_warning(id, s["diff"].as_str().unwrap_or("")))
                p {
                    "The policy in force would change to " code { (show(s["origin"].as_str().unwrap_or("?"), &marks)) }
                    " (sha256 " code id={ "sha-" (id) } { (show(s["sha256"].as_str().unwrap_or("?"), &marks)) } "). "
                    "Approving applies it to every request from then on; denying keeps the policy in force."
                }
                pre.code.ltr id={ "diff-" (id) } { (show(s["diff"].as_str().unwrap_or(""), &marks)) }
            } @else if item.kind == "session" {
                p id={ "session-" (id) } {
                    "A session on the " b { (show(s["tier"].as_str().unwrap_or("?"), &marks)) } " tier: "
                    "once approved, each of its cells runs there without asking again, "
                    "under the policy's limits, until the session ends."
                }
            } @else {
                (command_details(id, s, &marks))
            }
            // Who decides is on the button: a session another site swapped in shows itself.
            @for (decision, label) in [("approve", "Approve"), ("deny", "Deny")] {
                form method="post" action={ "/review/" (id) "/" (decision) } {
                    input type="hidden" name="csrf" value=(csrf);
                    input name="note" placeholder="note (optional)" id={ (decision) "-note-" (id) };
                    " "
                    button id={ (decision) "-" (id) } { (label) " #" (id) " as " (show(who, &marks)) }
                }
            }
        }
    }
}

/// A snippet under review: its code (highlighted, or folded and plain when large),
/// tier and route, the analysis' findings and the policy that applies.
fn execute_details(id: i64, s: &serde_json::Value, marks: &Marks) -> Markup {
    let code = s["code"].as_str().unwrap_or("");
    let findings = s["findings"].as_array().cloned().unwrap_or_default();
    html! {
        (hidden_warning(id, code))
        @if code.len() <= HIGHLIGHTED {
            pre.code.ltr id={ "code-" (id) } { (highlight(code, marks)) }
        } @else {
            // Large code: plain, folded (highlighting wraps every token in markup).
            details {
                summary { "Code: " (code.len()) " bytes, " (code.lines().count()) " lines (expand to read all of it)" }
                pre.code.ltr id={ "code-" (id) } { (show(code, marks)) }
            }
        }
        p {
            "Tier " b id={ "tier-" (id) } { (show(s["tier"].as_str().unwrap_or("?"), marks)) }
            "; route: " (show(s["route"].as_str().unwrap_or(""), marks))
        }
        @if findings.is_empty() {
            p { "Static analysis: no findings." }
        } @else {
            ul id={ "findings-" (id) } {
                @for f in &findings {
                    li class=(if f["severity"].as_str() == Some("deny") { "deny" } else { "warn" }) {
                        "line " (f["line"].as_u64().unwrap_or(0)) ": " (show(f["message"].as_str().unwrap_or(""), marks))
                    }
                }
            }
        }
        details {
            summary { "Policy that applies" }
            pre.ltr id={ "policy-" (id) } { (show(s["policy"].as_str().unwrap_or(""), marks)) }
        }
    }
}

/// A workspace change set under review: each changed path, the unified diff of
/// its text files (binary ones by size and hash), and the snippet that made it.
fn workspace_details(id: i64, s: &serde_json::Value, marks: &Marks) -> Markup {
    let diff = s["diff"].as_str().unwrap_or("");
    let code = s["code"].as_str().unwrap_or("");
    let changes = s["changes"].as_array().cloned().unwrap_or_default();
    let total = s["changes_total"].as_u64().unwrap_or(changes.len() as u64);
    let size = |e: &serde_json::Value| e["size"].as_u64().map_or_else(|| "-".to_string(), |n| n.to_string());
    let paths: String = changes.iter().filter_map(|c| c["path"].as_str()).collect::<Vec<_>>().join("\n");
    html! {
        (hidden_warning(id, &format!("{paths}{diff}{code}")))
        p {
            "The run changed workspace " b id={ "workspace-" (id) } { (show(s["workspace"].as_str().unwrap_or("?"), marks)) }
            " (from version " (s["base"].as_u64().unwrap_or(0)) ", on the "
            (show(s["tier"].as_str().unwrap_or("?"), marks)) " tier). Approving makes these changes the next version; "
            "denying discards them and leaves the workspace as it is."
        }
        p.meta { "Change set sha256 " code id={ "digest-" (id) } { (show(s["digest"].as_str().unwrap_or(""), marks)) } }
        table id={ "changes-" (id) } {
            tr { th { "path" } th { "change" } th { "bytes before" } th { "bytes after" } }
            @for c in &changes {
                tr {
                    td.ltr { (show(c["path"].as_str().unwrap_or("?"), marks)) }
                    td { (show(c["action"].as_str().unwrap_or("?"), marks)) }
                    td { (size(&c["old"])) }
                    td { (size(&c["new"])) }
                }
            }
        }
        @if total > changes.len() as u64 {
            p.meta { (total - changes.len() as u64) " more changes are not listed." }
        }
        p { "Diff:" }
        pre.code.ltr id={ "diff-" (id) } { (show(diff, marks)) }
        details {
            summary { "The snippet that made them" }
            pre.code.ltr id={ "code-" (id) } { (show(code, marks)) }
        }
    }
}

/// A host function call under review: the function, its arguments (as JSON,
/// shown as text), the snippet that makes it and the session's earlier cells.
fn call_details(id: i64, s: &serde_json::Value, marks: &Marks) -> Markup {
    let code = s["code"].as_str().unwrap_or("");
    let arguments = serde_json::to_string_pretty(&s["arguments"]).unwrap_or_default();
    let earlier: Vec<&str> =
        s["earlier_cells"].as_array().map(|a| a.iter().filter_map(|c| c.as_str()).collect()).unwrap_or_default();
    html! {
        (hidden_warning(id, &format!("{arguments}{code}")))
        p {
            "The running snippet calls host function "
            b id={ "function-" (id) } { (show(s["function"].as_str().unwrap_or("?"), marks)) }
            @if let Some(session) = s["session"].as_str() { " in session " code { (show(session, marks)) } }
            ". It waits for your decision; denying raises PermissionError in it. "
            "In a session, code from any earlier cell (a function it defined, a thread it started) "
            "can make this call: read them too."
        }
        p { "Arguments:" }
        pre.code.ltr id={ "arguments-" (id) } { (show(&arguments, marks)) }
        p { "The snippet:" }
        @if code.len() <= HIGHLIGHTED {
            pre.code.ltr id={ "code-" (id) } { (highlight(code, marks)) }
        } @else {
            pre.code.ltr id={ "code-" (id) } { (show(code, marks)) }
        }
        @if !earlier.is_empty() {
            details id={ "earlier-" (id) } {
                summary { "The session's earlier cells (oldest first)" }
                @for cell in &earlier {
                    pre.code.ltr { (show(cell, marks)) }
                }
            }
        }
    }
}

/// A command under review, word by word: a word with spaces or quotes cannot pass
/// for two, and a word with a look-alike letter (Cyrillic а in /dаta) says so.
fn command_details(id: i64, s: &serde_json::Value, marks: &Marks) -> Markup {
    let words: Vec<&str> =
        s["argv"].as_array().map(|a| a.iter().filter_map(|w| w.as_str()).collect()).unwrap_or_default();
    html! {
        (hidden_warning(id, &words.concat()))
        p { "Runs in a docker-tier container, " (words.len()) " words:" }
        ol.argv.ltr id={ "argv-" (id) } {
            @for w in &words {
                li {
                    code { (show(w, marks)) }
                    @let odd = code_points(w.chars().filter(|c| !c.is_ascii()));
                    @if !odd.is_empty() {
                        " " span.warn { "(not ASCII: " (odd) ")" }
                    }
                }
            }
        }
    }
}

pub(super) fn render_decided(item: &Item) -> Markup {
    let id = item.id;
    let marks = Marks::new();
    html! {
        div.item id={ "done-" (id) } {
            b { "#" (id) " " (item.kind) }
            ": "
            span id={ "status-" (id) } { (item.status.as_str()) }
            @if let Some(w) = &item.decided_by { " by " (show(w, &marks)) }
            @match &item.outcome {
                Some(o) => {
                    "; ran: "
                    span id={ "outcome-" (id) } { (show(o["status"].as_str().unwrap_or("?"), &marks)) }
                    pre id={ "output-" (id) } { (show(&outcome_text(o), &marks)) }
                }
                None if item.status == crate::approval::ApprovalStatus::Approved => { "; running…" }
                None => {}
            }
        }
    }
}

/// A run's output and error message, cut at [`SHOWN_OUTPUT`] characters.
fn outcome_text(o: &serde_json::Value) -> String {
    let mut text = o["stdout"].as_str().unwrap_or("").to_string();
    if let Some(err) = o["error"]["message"].as_str() {
        text.push_str(err);
    }
    text.chars().take(SHOWN_OUTPUT).collect()
}

/// Warnings above an item whose text has characters [`crate::text::hidden`] names
/// or control characters (shown as marks in the text itself, by [`show`]), or
/// letters outside ASCII (marked there too, while the item's marks last): a letter
/// that looks Latin (Cyrillic `а`) may make a word read as another it is not.
pub(super) fn hidden_warning(id: i64, text: &str) -> Markup {
    let n = text.chars().filter(|c| odd(*c)).count();
    let mut letters: Vec<char> = text.chars().filter(|c| look_alike(*c)).collect();
    let count = letters.len();
    letters.sort_unstable();
    letters.dedup();
    html! {
        @if n > 0 {
            p.deny id={ "hidden-" (id) } {
                "Contains " (n) " invisible, bidirectional or control character(s), \
                 marked below: an editor or terminal may show this differently from what runs."
            }
        }
        @if count > 0 {
            p.warn id={ "letters-" (id) } {
                "Contains " (count) " letter(s) outside ASCII (" (code_points(letters.into_iter())) "), \
                 marked below: one that looks Latin may make a name or a string read as another."
            }
        }
    }
}

/// `U+0430 U+0435 …`: the first [`LISTED`] code points of `chars`, and how many more.
fn code_points(chars: impl Iterator<Item = char>) -> String {
    let all: Vec<char> = chars.collect();
    let mut shown: Vec<String> = all.iter().take(LISTED).map(|c| format!("U+{:04X}", u32::from(*c))).collect();
    if all.len() > LISTED {
        shown.push(format!("and {} more", all.len() - LISTED));
    }
    shown.join(" ")
}

/// Code points listed in one warning.
const LISTED: usize = 8;

/// A character [`show`] replaces by a mark: one [`crate::text::hidden`] names, or
/// a control character other than tab and newline.
fn odd(c: char) -> bool {
    crate::text::hidden(c).is_some() || (c.is_control() && c != '\n' && c != '\t')
}

/// A letter outside ASCII, which [`show`] marks where it stands.
fn look_alike(c: char) -> bool {
    // Letters, and the slashes a path could be faked with.
    !c.is_ascii()
        && (c.is_alphabetic()
            || matches!(
                c,
                '\u{1735}'
                    | '\u{2044}'
                    | '\u{2215}'
                    | '\u{2216}'
                    | '\u{2571}'
                    | '\u{29F8}'
                    | '\u{27CB}'
                    | '\u{27CD}'
                    | '\u{29F9}'
                    | '\u{2F03}'
                    | '\u{FE68}'
                    | '\u{FF0F}'
                    | '\u{FF3C}'
            ))
}

/// Marks one item may still draw: every [`show`] of the item draws from the same
/// budget of [`MAX_MARKS`], so that the item's markup stays within a small multiple
/// of its text however that text is cut into tokens or words.
pub(super) struct Marks(std::cell::Cell<usize>);

impl Marks {
    pub(super) fn new() -> Marks {
        Marks(std::cell::Cell::new(MAX_MARKS))
    }

    /// Takes one mark, if any is left.
    fn take(&self) -> bool {
        let left = self.0.get();
        self.0.set(left.saturating_sub(1));
        left > 0
    }
}

/// One piece of shown text: plain text, the mark for a run of one hidden or control
/// character, or a marked letter outside ASCII.
enum Piece {
    Text(String),
    /// The mark's label (`⟦U+202E⟧`, `⟦U+200B ×84000⟧`) and, while marks are still
    /// drawn, the character's name for its title (past them, the character shows
    /// as U+FFFD).
    Mark(String, Option<&'static str>),
    /// A letter outside ASCII, shown as itself on a marked background, titled with
    /// its code point.
    Letter(char),
}

/// `s` as HTML text, with every character [`crate::text::hidden`] names replaced by
/// a visible mark (`⟦U+202E⟧`) titled with its name, control characters other than
/// tab and newline shown as `⟦U+001B⟧`, and letters outside ASCII marked where they
/// stand. A run of one hidden or control character is one mark with its count
/// (`⟦U+200B ×84000⟧`). Marks come from the item's budget ([`Marks`]): past it,
/// each such character is one U+FFFD and letters are unmarked (the warnings above
/// the item still count them all), so that no text makes the page more than a few
/// times its own size.
pub(super) fn show(s: &str, marks: &Marks) -> Markup {
    let mut pieces = Vec::new();
    let mut plain = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if look_alike(c) && marks.take() {
            pieces.push(Piece::Text(std::mem::take(&mut plain)));
            pieces.push(Piece::Letter(c));
            continue;
        }
        if !odd(c) {
            plain.push(c);
            continue;
        }
        let mut run = 1;
        while chars.peek() == Some(&c) {
            chars.next();
            run += 1;
        }
        pieces.push(Piece::Text(std::mem::take(&mut plain)));
        let count = if run > 1 { format!(" \u{D7}{run}") } else { String::new() };
        let label = format!("\u{27E6}U+{:04X}{count}\u{27E7}", u32::from(c));
        let name = marks.take().then(|| crate::text::hidden(c).unwrap_or("CONTROL CHARACTER"));
        pieces.push(Piece::Mark(label, name));
    }
    pieces.push(Piece::Text(plain));
    html! {
        @for piece in &pieces {
            @match piece {
                Piece::Text(t) => (t),
                Piece::Mark(label, Some(name)) => mark.hidden title=(name) { (label) },
                // Past the item's budget: one replacement character per character
                // (the warning above the item counts them all).
                Piece::Mark(_, None) => "\u{FFFD}",
                Piece::Letter(c) => mark.letter title=(format!("U+{:04X}", u32::from(*c))) { (c) },
            }
        }
    }
}

/// Marks one item's texts draw before the rest is plain text.
pub(super) const MAX_MARKS: usize = 256;

/// Python source as HTML with `<span class=…>` around keywords (`k`), strings (`s`),
/// comments (`c`), numbers (`n`) and operators (`o`), from the same lexer the
/// analysis uses, every piece through [`show`]. Source that does not lex is shown
/// plain past the error.
pub(super) fn highlight(code: &str, marks: &Marks) -> Markup {
    use ruff_python_ast::token::TokenKind as K;
    let parsed = ruff_python_parser::parse_unchecked(
        code,
        ruff_python_parser::ParseOptions::from(ruff_python_ast::PySourceType::Python),
    );
    // (class, text) in source order; the text between tokens has no class.
    let mut pieces: Vec<(Option<&str>, &str)> = Vec::new();
    let mut at = 0usize;
    for t in parsed.tokens().iter() {
        let (start, end) = (usize::from(t.range().start()), usize::from(t.range().end()));
        if start < at || end > code.len() || !code.is_char_boundary(start) || !code.is_char_boundary(end) {
            continue;
        }
        pieces.push((None, &code[at..start]));
        let class = match t.kind() {
            k if k.is_keyword() => Some("k"),
            K::String
            | K::FStringStart
            | K::FStringMiddle
            | K::FStringEnd
            | K::TStringStart
            | K::TStringMiddle
            | K::TStringEnd => Some("s"),
            K::Comment => Some("c"),
            K::Int | K::Float | K::Complex => Some("n"),
            k if k.is_operator() => Some("o"),
            _ => None,
        };
        pieces.push((class, &code[start..end]));
        at = end;
    }
    pieces.push((None, &code[at.min(code.len())..]));
    html! {
        @for (class, text) in &pieces {
            @if let Some(class) = class {
                span class=(class) { (show(text, marks)) }
            } @else {
                (show(text, marks))
            }
        }
    }
}
