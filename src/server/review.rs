//! `/review`: the page where a human decides the approvals queue. Server-rendered
//! HTML (no build step); its one small script reloads the page when the queue
//! changes.
//!
//! A browser cannot send a bearer header when it navigates, so the page signs in
//! once: `POST /review/login` with a token that has the `approve` role starts a
//! session (a random id in an `HttpOnly`, `SameSite=Strict` cookie, eight hours).
//! Approve and deny are plain forms that carry the session's CSRF token.
//!
//! # Security invariants
//! - Everything shown is HTML-escaped (code, findings, reasons, outcomes): a
//!   snippet under review cannot script the reviewer's page. The Content Security
//!   Policy allows only the page's own script (by nonce) and same-origin fetches
//!   and forms.
//! - A decision needs a live session and its CSRF token; it is recorded with the
//!   session's token name, as the API's are.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ruff_text_size::Ranged;
use serde::Deserialize;

use super::auth::{Identity, Role};
use super::{Shared, problem, random_hex};
use crate::approval::Item;

/// The session cookie's name.
const COOKIE: &str = "terrarium_review";
/// How long a session lasts.
const SESSION: Duration = Duration::from_secs(8 * 3600);
/// Most sessions at once (sign-ins beyond are refused until some expire).
const MAX_SESSIONS: usize = 1024;
/// Most sessions one identity holds: its next sign-in ends its oldest.
const PER_IDENTITY: usize = 4;
/// The cookie that ties a sign-in form to the browser that loaded it.
const LOGIN_COOKIE: &str = "terrarium_login";
/// Decided items shown under the queue.
const RECENT: usize = 10;
/// Outcome text shown per item.
const SHOWN_OUTPUT: usize = 4096;
/// Code longer than this is shown plain (no highlighting) and folded.
const HIGHLIGHTED: usize = 16 << 10;

struct Session {
    who: Identity,
    csrf: String,
    started: Instant,
    expires: Instant,
}

/// The review page's sign-ins.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn start(&self, who: Identity) -> Option<String> {
        let mut map = self.map.lock().ok()?;
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        // One identity cannot crowd out the others: its oldest sessions end.
        loop {
            let mine: Vec<(&String, Instant)> =
                map.iter().filter(|(_, s)| s.who.name == who.name).map(|(k, s)| (k, s.started)).collect();
            if mine.len() < PER_IDENTITY {
                break;
            }
            let oldest = mine.iter().min_by_key(|(_, t)| *t).map(|(k, _)| (*k).clone())?;
            map.remove(&oldest);
        }
        if map.len() >= MAX_SESSIONS {
            return None;
        }
        let id = random_hex(32)?;
        map.insert(id.clone(), Session { who, csrf: random_hex(16)?, started: now, expires: now + SESSION });
        Some(id)
    }

    /// The session's identity and CSRF token.
    fn find(&self, headers: &HeaderMap) -> Option<(Identity, String)> {
        let id = session_id(headers)?;
        let map = self.map.lock().ok()?;
        let s = map.get(id).filter(|s| s.expires > Instant::now())?;
        Some((s.who.clone(), s.csrf.clone()))
    }

    /// Whether the request carries a live session (for admission).
    pub(super) fn signed_in(&self, headers: &HeaderMap) -> bool {
        self.find(headers).is_some()
    }

    fn end(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut map)) = (session_id(headers), self.map.lock()) {
            map.remove(id);
        }
    }
}

/// The session id in the request's cookies.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

/// Every value cookie `name` has in the request.
fn cookie_values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Cookie `name`'s value in the request; `None` when it is there more than once
/// (a page on a sibling origin can add a same-named cookie with a narrower path,
/// which a browser sends first).
fn cookie<'h>(headers: &'h HeaderMap, name: &'h str) -> Option<&'h str> {
    let mut found = cookie_values(headers, name);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Whether a form post comes from this server's own pages, as far as the browser
/// says: `Sec-Fetch-Site` must be `same-origin` (or `none`, typed by the user) and
/// `Origin` must be this Host. Another port on the same host is another origin but
/// the same site, so `SameSite` cookies alone do not stop it. A client that sends
/// neither header is not a browser, and has no ambient credentials to abuse.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |h: header::HeaderName| headers.get(h).map(|v| v.to_str().unwrap_or("\u{0}"));
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
        }
        (Some(_), None) => false,
    }
}

/// When the request carries one of the review page's cookies twice (a page on
/// another port of this host can set cookies here, with a narrower path), the
/// answer that clears this site's cookies (`Clear-Site-Data`) and says why; the
/// reviewer signs in again.
fn tossed(headers: &HeaderMap) -> Option<Response> {
    let twice = |name: &'static str| cookie_values(headers, name).nth(1).is_some();
    if !(twice(COOKIE) || twice(LOGIN_COOKIE)) {
        return None;
    }
    let mut r = login_page(
        "Another site on this host set a second review cookie in this browser; this site's cookies were \
         cleared. Sign in again, and close pages from other local servers you do not trust.",
        StatusCode::FORBIDDEN,
    );
    r.headers_mut().insert(HeaderName::from_static("clear-site-data"), HeaderValue::from_static("\"cookies\""));
    Some(r)
}

/// The answer to a form post from another origin.
fn cross_origin() -> Response {
    problem(StatusCode::FORBIDDEN, "this form was posted from another origin")
}

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/review", get(page))
        .route("/review/state", get(state_json))
        .route("/review/login", post(login))
        .route("/review/logout", post(logout))
        .route("/review/{id}/{decision}", post(decide))
        .layer(DefaultBodyLimit::max(16 << 10))
}

/// Headers every review response carries.
fn html(status: StatusCode, body: String, nonce: &str) -> Response {
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

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}\
h1{font-size:1.4em}.item{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}\
pre{background:#f6f6f6;padding:.6em;overflow:auto}.k{color:#a626a4;font-weight:600}.s{color:#50a14f}\
.c{color:#999;font-style:italic}.n{color:#986801}.o{color:#0184bc}.deny{color:#b00}.warn{color:#a60}\
form{display:inline}button{margin-right:.5em}.meta{color:#666}\
.ltr{unicode-bidi:bidi-override;direction:ltr}pre.code{white-space:pre-wrap;overflow-wrap:anywhere}\
#changed{position:fixed;top:0;left:0;right:0;background:#ffd;border-bottom:1px solid #cc0;padding:.4em;display:none}mark.hidden{background:#fdd;color:#b00;font-weight:600}\
ol.argv code{background:#f6f6f6;padding:0 .2em;white-space:pre-wrap}";

fn layout(title: &str, body: &str, nonce: &str, fingerprint: &str, pending: &str) -> String {
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
const SCRIPT: &str = "(function(){var f=document.body.dataset.fingerprint;if(!f)return;var last=Date.now(),state=0;\
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
fn login_page(message: &str, status: StatusCode) -> Response {
    let nonce = random_hex(16).unwrap_or_default();
    let check = random_hex(16).unwrap_or_default();
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
fn fingerprint(items: &[Item]) -> String {
    items
        .iter()
        .map(|i| crate::approval::fingerprint_entry(i.id, &i.status, i.outcome.is_some()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every pending item (queried by status, so newer decided items never hide one)
/// and the [`RECENT`] newest decided ones.
async fn load(state: &Shared) -> Result<(Vec<Item>, Vec<Item>), Response> {
    state.gate.review(RECENT).await.map_err(|e| super::fault("the approvals queue", &e))
}

async fn page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = tossed(&headers) {
        return r;
    }
    let Some((who, csrf)) = state.sessions.find(&headers) else {
        return login_page("Sign in to see the approvals queue.", StatusCode::OK);
    };
    let (pending, recent) = match load(&state).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // The fingerprint is the queue's own order (newest first); the page lists the
    // oldest first, so that a new item lands below what the reviewer is reading.
    let all: Vec<Item> = pending.iter().chain(&recent).cloned().collect();
    let print = fingerprint(&all);
    let mut body = format!(
        "<p id=changed>The queue changed; the page reloads when you pause.</p>\
         <h1>Terrarium review</h1><p class=meta>Signed in as <b id=who>{}</b>. \
         <form method=post action=/review/logout><input type=hidden name=csrf value=\"{csrf}\"><button>Sign out</button></form></p>\
         <h2>Waiting for a decision ({})</h2>",
        show(&who.name),
        pending.len()
    );
    if pending.is_empty() {
        body.push_str("<p id=empty>Nothing is waiting.</p>");
    }
    let now = crate::approval::now_us();
    for item in pending.iter().rev() {
        render_pending(&mut body, item, &csrf, now, &who.name);
    }
    body.push_str("<h2>Recently decided</h2>");
    for item in &recent {
        render_decided(&mut body, item);
    }
    let nonce = random_hex(16).unwrap_or_default();
    let ids: Vec<String> = pending.iter().map(|i| i.id.to_string()).collect();
    html(StatusCode::OK, layout("Terrarium review", &body, &nonce, &print, &ids.join(",")), &nonce)
}

fn render_pending(out: &mut String, item: &Item, csrf: &str, now_us: i64, who: &str) {
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
                        f["line"],
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

fn render_decided(out: &mut String, item: &Item) {
    let id = item.id;
    let by = item.decided_by.as_deref().map(|w| format!(" by {}", show(w))).unwrap_or_default();
    let _ = write!(
        out,
        "<div class=item id=done-{id}><b>#{id} {}</b>: <span id=status-{id}>{}</span>{by}",
        escape(&item.kind),
        escape(&item.status)
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
        None if item.status == "approved" => out.push_str("; running…"),
        None => {}
    }
    out.push_str("</div>");
}

async fn state_json(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = tossed(&headers) {
        return r;
    }
    if state.sessions.find(&headers).is_none() {
        return problem(StatusCode::UNAUTHORIZED, "sign in at /review");
    }
    // Polled every second by every open tab: read without the items' subjects.
    match state.gate.fingerprint(RECENT).await {
        Ok(f) => {
            // The pending ids lead the fingerprint (`id:pending:…`).
            let pending: Vec<i64> =
                f.split(',').filter_map(|p| p.split_once(":pending:").and_then(|(id, _)| id.parse().ok())).collect();
            axum::Json(serde_json::json!({"fingerprint": f, "pending": pending})).into_response()
        }
        Err(e) => super::fault("the approvals queue", &e),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    /// The value the sign-in form carried (also in its cookie).
    #[serde(default)]
    check: String,
}

async fn login(State(state): State<Shared>, request_headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    if !same_origin(&request_headers) {
        return cross_origin();
    }
    if let Some(r) = tossed(&request_headers) {
        return r;
    }
    let from_our_form =
        cookie(&request_headers, LOGIN_COOKIE).is_some_and(|c| !c.is_empty() && super::auth::same_secret(c, &f.check));
    if !from_our_form {
        return login_page(
            "Sign in from this page (the sign-in did not come from a form this server showed).",
            StatusCode::FORBIDDEN,
        );
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", f.token.trim())) {
        headers.insert(header::AUTHORIZATION, v);
    }
    let who = match super::authorize(&state, &headers, Role::Approve, "POST /review/login").await {
        Ok(who) => who,
        Err(r) => {
            let status = r.status();
            return login_page(
                if status == StatusCode::FORBIDDEN { "That token lacks the approve role." } else { "Unknown token." },
                status,
            );
        }
    };
    let Some(id) = state.sessions.start(who) else {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "too many review sessions; try again later");
    };
    let mut r = see_other("/review");
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/review; Max-Age={}", SESSION.as_secs());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct DecisionForm {
    csrf: String,
    note: Option<String>,
}

async fn decide(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    Form(f): Form<DecisionForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_origin();
    }
    if let Some(r) = tossed(&headers) {
        return r;
    }
    let Some((who, csrf)) = state.sessions.find(&headers) else {
        return login_page("Your session ended; sign in again.", StatusCode::UNAUTHORIZED);
    };
    if !super::auth::same_secret(&f.csrf, &csrf) {
        return problem(StatusCode::FORBIDDEN, "the form's CSRF token does not match this session");
    }
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return problem(StatusCode::NOT_FOUND, "expected /approve or /deny"),
    };
    let Ok(id) = id.parse::<i64>() else { return problem(StatusCode::NOT_FOUND, "no such approval request") };
    let note = f.note.filter(|n| !n.trim().is_empty());
    let r = super::decide(&state, id, approve, &who, note.as_deref()).await;
    if r.status().is_success() { see_other("/review") } else { r }
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<LogoutForm>) -> Response {
    if !same_origin(&headers) {
        return cross_origin();
    }
    if let Some((_, csrf)) = state.sessions.find(&headers) {
        if !super::auth::same_secret(&f.csrf, &csrf) {
            return problem(StatusCode::FORBIDDEN, "the form's CSRF token does not match this session");
        }
        state.sessions.end(&headers);
    }
    let mut r = see_other("/review");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("terrarium_review=; HttpOnly; SameSite=Strict; Path=/review; Max-Age=0"),
    );
    r
}

/// A warning above an item whose text has characters [`crate::text::hidden`]
/// names (they are shown as marks in the text itself, by [`show`]).
fn hidden_warning(out: &mut String, id: i64, text: &str) {
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
const MAX_MARKS: usize = 64;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlighting_escapes_and_marks_tokens() {
        let h = highlight("import os  # <b>\nx = f'{1}' + \"</pre><script>\"\n");
        assert!(h.contains("<span class=k>import</span>"), "{h}");
        assert!(h.contains("<span class=c># &lt;b&gt;</span>"), "{h}");
        assert!(h.contains("&lt;/pre&gt;&lt;script&gt;"), "{h}");
        assert!(!h.contains("<script>") && !h.contains("</pre>"), "{h}");
        assert!(h.contains("<span class=n>1</span>"), "{h}");
        // Text that does not lex is still all there, escaped.
        let bad = highlight("def (:\n  '''<x>");
        assert!(bad.contains("&lt;x&gt;"), "{bad}");
        assert_eq!(escape("<a href='x'>&\""), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
    }

    /// Round 4 of the host review: a large snippet is not highlighted (markup per
    /// token made a 240 KB item into megabytes) and is folded; who asked is shown.
    #[test]
    fn large_code_is_shown_plain_and_folded_with_who_asked() {
        let item = Item {
            id: 7,
            kind: "execute".into(),
            subject: serde_json::json!({"code": "1,".repeat(HIGHLIGHTED), "caller": "ci", "tier": "wasm"}),
            reason: "r".into(),
            status: "pending".into(),
            created_us: 0,
            deadline_us: 0,
            decided_by: None,
            decided_us: None,
            note: None,
            outcome: None,
        };
        let mut out = String::new();
        render_pending(&mut out, &item, "csrf", 0, "alice");
        assert!(out.contains("<details><summary>Code: 32768 bytes") && !out.contains("<span class=n>"), "folded");
        assert!(out.len() < 2 * 32768 + 4096, "{} bytes of markup", out.len());
        assert!(out.contains("Asked by <b id=caller-7>ci</b>"), "who asked");
    }

    /// H5: what the reviewer sees is what runs: bidi controls and invisible
    /// characters become visible marks, in the code and in its tokens.
    #[test]
    fn h5_hidden_characters_are_shown_as_marks() {
        let code = "if access != 'user\u{202E} \u{2066}# admin\u{2069} \u{2066}':\n    x\u{1b}[2K\n";
        let h = highlight(code);
        assert!(!h.chars().any(|c| crate::text::hidden(c).is_some() || c == '\u{1b}'), "{h}");
        assert!(h.contains("title=\"RIGHT-TO-LEFT OVERRIDE\">\u{27E6}U+202E\u{27E7}</mark>"), "{h}");
        assert!(h.contains("\u{27E6}U+2066\u{27E7}") && h.contains("\u{27E6}U+001B\u{27E7}"), "{h}");
        assert_eq!(show("a<b\n"), "a&lt;b\n");
        // Host review round 5: 84,000 zero-width spaces made 5 MB of marks.
        let many = show(&"\u{200B}".repeat(84_000));
        assert!(many.contains("U+200B \u{D7}84000") && many.len() < 200, "{many}");
        let alternating = show(&"\u{200B}\u{200C}".repeat(40_000));
        assert!(alternating.len() < 80_000 * 14, "{} bytes", alternating.len());
        assert_eq!(alternating.matches("<mark").count(), MAX_MARKS);
    }
}
