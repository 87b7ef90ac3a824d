//! The page's HTML: layout, script and style, each item's rendering, and the
//! escaping every piece of text from a snippet, a command or a caller goes through.

use super::*;

/// Headers every review response carries.
pub(super) fn html(status: StatusCode, body: String, nonce: &str) -> Response {
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut r = (status, body).into_response();
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
#changed{position:fixed;top:0;left:0;right:0;background:#ffd;border-bottom:1px solid #cc0;padding:.4em;display:none}mark.hidden{background:#fdd;color:#b00;font-weight:600}\
ol.argv code{background:#f6f6f6;padding:0 .2em;white-space:pre-wrap}";

pub(super) fn layout(title: &str, body: &str, nonce: &str, fingerprint: &str, pending: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title><style>{STYLE}</style></head>\
         <body data-fingerprint=\"{}\" data-pending=\"{}\">{body}<script nonce=\"{nonce}\">{SCRIPT}</script></body></html>",
        escape(fingerprint),
        escape(pending)
    )
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
    let body = format!(
        "<h1>Terrarium review</h1><p id=message>{}</p><form method=post action=/review/login>\
         <input type=hidden name=check value=\"{check}\">\
         <label>Token with the approve role <input id=token name=token type=password autocomplete=off></label> \
         <button id=login>Sign in</button></form>",
        escape(message)
    );
    let mut r = html(status, layout("Terrarium review: sign in", &body, &nonce, "", ""), &nonce);
    let c = format!("{LOGIN_COOKIE}={check}; HttpOnly; SameSite=Strict; Path=/review; Max-Age=3600");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// What changes the page: the items, their statuses, whether they have outcomes.
pub(super) fn fingerprint(items: &[Item]) -> String {
    items
        .iter()
        .map(|i| crate::approval::fingerprint_entry(i.id, i.status, i.outcome.is_some()))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn render_pending(out: &mut String, item: &Item, csrf: &str, now_us: i64, who: &str) {
    let id = item.id;
    let left = (item.deadline_us - now_us).max(0) / 1_000_000;
    let _ = write!(
        out,
        "<div class=item id=item-{id}><h3>#{id} {}</h3><p>{}</p><p class=meta>Denied automatically in {left} s.</p>",
        show(&item.kind),
        show(&item.reason)
    );
    let s = &item.subject;
    let _ = write!(
        out,
        "<p class=meta>Asked by <b id=caller-{id}>{}</b>{}</p>",
        show(s["caller"].as_str().unwrap_or("(not recorded)")),
        if s["scratch"].as_bool() == Some(true) { ", with a writable scratch directory" } else { "" }
    );
    match item.kind.as_str() {
        "execute" => {
            let code = s["code"].as_str().unwrap_or("");
            hidden_warning(out, id, code);
            if code.len() <= HIGHLIGHTED {
                let _ = write!(out, "<pre class=\"code ltr\" id=code-{id}>{}</pre>", highlight(code));
            } else {
                // Large code: plain, folded (highlighting wraps every token in markup).
                let _ = write!(
                    out,
                    "<details><summary>Code: {} bytes, {} lines (expand to read all of it)</summary>\
                     <pre class=\"code ltr\" id=code-{id}>{}</pre></details>",
                    code.len(),
                    code.lines().count(),
                    show(code)
                );
            }
            let _ = write!(
                out,
                "<p>Tier <b id=tier-{id}>{}</b>; route: {}</p>",
                show(s["tier"].as_str().unwrap_or("?")),
                show(s["route"].as_str().unwrap_or(""))
            );
            let findings = s["findings"].as_array().cloned().unwrap_or_default();
            if findings.is_empty() {
                out.push_str("<p>Static analysis: no findings.</p>");
            } else {
                let _ = write!(out, "<ul id=findings-{id}>");
                for f in &findings {
                    let sev = f["severity"].as_str().unwrap_or("warn");
                    let _ = write!(
                        out,
                        "<li class={}>line {}: {}</li>",
                        if sev == "deny" { "deny" } else { "warn" },
                        f["line"].as_u64().unwrap_or(0),
                        show(f["message"].as_str().unwrap_or(""))
                    );
                }
                out.push_str("</ul>");
            }
            let _ = write!(
                out,
                "<details><summary>Policy that applies</summary><pre class=ltr id=policy-{id}>{}</pre></details>",
                show(s["policy"].as_str().unwrap_or(""))
            );
        }
        _ => {
            // Word by word: a word with spaces or quotes cannot pass for two.
            let words: Vec<&str> =
                s["argv"].as_array().map(|a| a.iter().filter_map(|w| w.as_str()).collect()).unwrap_or_default();
            hidden_warning(out, id, &words.concat());
            let _ = write!(
                out,
                "<p>Runs in a docker-tier container, {} words:</p><ol class=\"argv ltr\" id=argv-{id}>",
                words.len()
            );
            for w in words {
                // Paths and options are rarely anything but ASCII: a look-alike letter
                // (Cyrillic а in /dаta) is named.
                let odd = crate::text::non_ascii_code_points(w);
                let note =
                    if odd.is_empty() { String::new() } else { format!(" <span class=warn>(not ASCII: {odd})</span>") };
                let _ = write!(out, "<li><code>{}</code>{note}</li>", show(w));
            }
            out.push_str("</ol>");
        }
    }
    // Who decides is on the button: a session another site swapped in shows itself.
    for (decision, label) in [("approve", "Approve"), ("deny", "Deny")] {
        let _ = write!(
            out,
            "<form method=post action=/review/{id}/{decision}><input type=hidden name=csrf value=\"{csrf}\">\
             <input name=note placeholder=\"note (optional)\" id={decision}-note-{id}> \
             <button id={decision}-{id}>{label} #{id} as {}</button></form>",
            show(who)
        );
    }
    out.push_str("</div>");
}

pub(super) fn render_decided(out: &mut String, item: &Item) {
    let id = item.id;
    let by = item.decided_by.as_deref().map(|w| format!(" by {}", show(w))).unwrap_or_default();
    let _ = write!(
        out,
        "<div class=item id=done-{id}><b>#{id} {}</b>: <span id=status-{id}>{}</span>{by}",
        escape(&item.kind),
        escape(item.status.as_str())
    );
    match &item.outcome {
        Some(o) => {
            let status = o["status"].as_str().unwrap_or("?");
            let mut text = o["stdout"].as_str().unwrap_or("").to_string();
            if let Some(err) = o["error"]["message"].as_str() {
                text.push_str(err);
            }
            let cut: String = text.chars().take(SHOWN_OUTPUT).collect();
            let _ = write!(
                out,
                "; ran: <span id=outcome-{id}>{}</span><pre id=output-{id}>{}</pre>",
                show(status),
                show(&cut)
            );
        }
        None if item.status == crate::approval::ApprovalStatus::Approved => out.push_str("; running…"),
        None => {}
    }
    out.push_str("</div>");
}

/// A warning above an item whose text has characters [`crate::text::hidden`]
/// names (they are shown as marks in the text itself, by [`show`]).
pub(super) fn hidden_warning(out: &mut String, id: i64, text: &str) {
    let n = text.chars().filter(|c| crate::text::hidden(*c).is_some()).count();
    if n > 0 {
        let _ = write!(
            out,
            "<p class=deny id=hidden-{id}>Contains {n} invisible or bidirectional control character(s), \
             marked below: an editor or terminal may show this differently from what runs.</p>"
        );
    }
}

/// `s` escaped for HTML text, with every character [`crate::text::hidden`] names
/// replaced by a visible mark (`⟦U+202E⟧`) titled with its name, and control
/// characters other than tab and newline shown as `⟦U+001B⟧`. A run of one such
/// character is one mark with its count (`⟦U+200B ×84000⟧`), and past
/// [`MAX_MARKS`] marks the rest are plain text, so that invisible characters cannot
/// make the page many times the size of what was submitted.
pub fn show(s: &str) -> String {
    let odd = |c: char| crate::text::hidden(c).is_some() || (c.is_control() && c != '\n' && c != '\t');
    if !s.chars().any(odd) {
        return escape(s);
    }
    let mut out = String::with_capacity(s.len() + 32);
    let mut plain = String::new();
    let mut marks = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if !odd(c) {
            plain.push(c);
            continue;
        }
        let mut run = 1;
        while chars.peek() == Some(&c) {
            chars.next();
            run += 1;
        }
        out.push_str(&escape(&std::mem::take(&mut plain)));
        let count = if run > 1 { format!(" \u{D7}{run}") } else { String::new() };
        let label = format!("\u{27E6}U+{:04X}{count}\u{27E7}", u32::from(c));
        if marks < MAX_MARKS {
            let name = crate::text::hidden(c).unwrap_or("CONTROL CHARACTER");
            let _ = write!(out, "<mark class=hidden title=\"{name}\">{label}</mark>");
        } else {
            out.push_str(&label);
        }
        marks += 1;
    }
    out.push_str(&escape(&plain));
    out
}

/// Marks [`show`] draws in one text before it writes the rest as plain text.
pub(super) const MAX_MARKS: usize = 64;

/// `s` with `& < > " '` escaped for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Python source as escaped HTML with `<span class=…>` around keywords (`k`),
/// strings (`s`), comments (`c`), numbers (`n`) and operators (`o`), from the same
/// lexer the analysis uses. Source that does not lex is shown plain past the error.
pub fn highlight(code: &str) -> String {
    use ruff_python_ast::token::TokenKind as K;
    let parsed = ruff_python_parser::parse_unchecked(
        code,
        ruff_python_parser::ParseOptions::from(ruff_python_ast::PySourceType::Python),
    );
    let mut out = String::with_capacity(code.len() * 2);
    let mut at = 0usize;
    for t in parsed.tokens().iter() {
        let (start, end) = (usize::from(t.range().start()), usize::from(t.range().end()));
        if start < at || end > code.len() || !code.is_char_boundary(start) || !code.is_char_boundary(end) {
            continue;
        }
        out.push_str(&show(&code[at..start]));
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
        let text = show(&code[start..end]);
        match class {
            Some(c) => {
                let _ = write!(out, "<span class={c}>{text}</span>");
            }
            None => out.push_str(&text),
        }
        at = end;
    }
    out.push_str(&show(&code[at.min(code.len())..]));
    out
}
