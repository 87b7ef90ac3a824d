//! `/review`: the page where a human decides the approvals queue. Server-rendered
//! HTML from maud templates (no build step); its one small script reloads the page when the queue
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
use super::{Shared, problem};
use crate::approval::Item;

mod sessions;
pub use sessions::*;
mod render;
use render::*;

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

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/review", get(page))
        .route("/review/state", get(state_json))
        .route("/review/login", post(login))
        .route("/review/logout", post(logout))
        .route("/review/{id}/{decision}", post(decide))
        .layer(DefaultBodyLimit::max(16 << 10))
}

/// Every pending item (queried by status, so newer decided items never hide one)
/// and the [`RECENT`] newest decided ones.
async fn load(state: &Shared) -> Result<(Vec<Item>, Vec<Item>), Response> {
    state.gate.review(RECENT).await.map_err(|e| super::fault("the approvals queue", &e))
}

/// The review page (HTML).
///
/// A sign-in form, or with a session the pending queue with highlighted code,
/// findings, policy, route and approve/deny buttons.
#[utoipa::path(
    get,
    path = "/review",
    tag = "review",
    operation_id = "review_page",
    responses(
        (status = 200, description = "HTML.", content_type = "text/html", body = String),
        (status = 403, description = "A second review cookie was set by another site on this host; cleared (HTML).", content_type = "text/html", body = String),
        (status = 500, response = super::openapi::ServerFault),
    ),
    security(()),
)]
pub(super) async fn page(State(state): State<Shared>, headers: HeaderMap) -> Response {
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
    let body = queue_page(&pending, &recent, &csrf, &who.name, crate::approval::now_us());
    let nonce = crate::hex::random(16).unwrap_or_default();
    let ids: Vec<String> = pending.iter().map(|i| i.id.to_string()).collect();
    html(StatusCode::OK, layout("Terrarium review", body, &nonce, &print, &ids.join(",")), &nonce)
}

/// The queue's fingerprint and the pending ids, for the page's reload script.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct ReviewState {
    /// Changes whenever the queue does.
    fingerprint: String,
    /// The pending items' ids.
    pending: Vec<i64>,
}

/// The queue's fingerprint, for the page's reload script (session cookie).
#[utoipa::path(
    get,
    path = "/review/state",
    tag = "review",
    operation_id = "review_state",
    responses(
        (status = 200, description = "The fingerprint.", body = ReviewState),
        (status = 401, description = "No session.", body = super::openapi::ErrorBody),
        (status = 500, response = super::openapi::ServerFault),
    ),
    security(()),
)]
pub(super) async fn state_json(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = tossed(&headers) {
        return r;
    }
    if state.sessions.find(&headers).is_none() {
        let answer = problem(StatusCode::UNAUTHORIZED, "sign in at /review");
        return no_session(&state, "GET /review/state", answer).await;
    }
    // Polled every second by every open tab: read without the items' subjects.
    match state.gate.fingerprint(RECENT).await {
        Ok(f) => {
            // The pending ids lead the fingerprint (`id:pending:…`).
            let pending: Vec<i64> =
                f.split(',').filter_map(|p| p.split_once(":pending:").and_then(|(id, _)| id.parse().ok())).collect();
            axum::Json(ReviewState { fingerprint: f, pending }).into_response()
        }
        Err(e) => super::fault("the approvals queue", &e),
    }
}

/// The sign-in form.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct LoginForm {
    /// A token with the approve role.
    token: String,
    /// The value the sign-in form carried (also in its cookie).
    #[serde(default)]
    check: String,
}

/// Sign in to the review page with a token that has the approve role.
///
/// Sets an HttpOnly, SameSite=Strict session cookie.
#[utoipa::path(
    post,
    path = "/review/login",
    tag = "review",
    operation_id = "review_login",
    request_body(content = inline(LoginForm), content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in; to /review."),
        (status = 401, description = "Unknown token (audited); the sign-in form again (HTML).", content_type = "text/html", body = String),
        (status = 403, description = "The token lacks the approve role (audited), or the form is not this server's (HTML); or posted from another origin.", content_type = "text/html", body = String),
        (status = 503, description = "Too many review sessions.", body = super::openapi::ErrorBody),
    ),
    security(()),
)]
pub(super) async fn login(
    State(state): State<Shared>,
    request_headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
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

/// A decision from the page.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct DecisionForm {
    /// The session's CSRF token.
    csrf: String,
    /// Recorded with the decision.
    note: Option<String>,
}

/// Approve or deny from the review page (session cookie and its CSRF token).
#[utoipa::path(
    post,
    path = "/review/{id}/{decision}",
    tag = "review",
    operation_id = "review_decide",
    params(
        ("id" = i64, Path, description = "The item's id."),
        ("decision" = super::openapi::Verdict, Path, description = "What the reviewer decides."),
    ),
    request_body(content = inline(DecisionForm), content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Decided; back to /review."),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, description = "No session; the sign-in form (HTML).", content_type = "text/html", body = String),
        (status = 403, description = "Wrong CSRF token, posted from another origin, or the reviewer's own request.", body = super::openapi::ErrorBody),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 500, response = super::openapi::ServerFault),
    ),
    security(()),
)]
pub(super) async fn decide(
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
        let answer = login_page("Your session ended; sign in again.", StatusCode::UNAUTHORIZED);
        return no_session(&state, "POST /review/{id}/{decision}", answer).await;
    };
    // Nothing is approved into running while the deployment is stopped.
    if decision == "approve"
        && let Err(e) = state.sandbox().check_not_stopped()
    {
        return super::sandbox_error(&state, &e);
    }
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

/// The sign-out form.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct LogoutForm {
    /// The session's CSRF token.
    csrf: String,
}

/// Ends the session.
#[utoipa::path(
    post,
    path = "/review/logout",
    tag = "review",
    operation_id = "review_logout",
    request_body(content = inline(LogoutForm), content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "To /review."),
        (status = 403, description = "Wrong CSRF token, or posted from another origin.", body = super::openapi::ErrorBody),
    ),
    security(()),
)]
pub(super) async fn logout(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<LogoutForm>) -> Response {
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

/// A request that needs a review session and has none: audited as the API's
/// refused callers are (in aggregate), then `answer`.
async fn no_session(state: &Shared, what: &str, answer: Response) -> Response {
    state.metrics.rejected("unauthorized");
    match super::respond::record_refusal(state, StatusCode::UNAUTHORIZED, what, None, Role::Approve).await {
        Ok(()) => answer,
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlighting_escapes_and_marks_tokens() {
        let h = highlight("import os  # <b>\nx = f'{1}' + \"</pre><script>\"\n", &Marks::new()).into_string();
        assert!(h.contains("<span class=\"k\">import</span>"), "{h}");
        assert!(h.contains("<span class=\"c\"># &lt;b&gt;</span>"), "{h}");
        assert!(h.contains("&lt;/pre&gt;&lt;script&gt;"), "{h}");
        assert!(!h.contains("<script>") && !h.contains("</pre>"), "{h}");
        assert!(h.contains("<span class=\"n\">1</span>"), "{h}");
        // Text that does not lex is still all there, escaped.
        let bad = highlight("def (:\n  '''<x>", &Marks::new()).into_string();
        assert!(bad.contains("&lt;x&gt;"), "{bad}");
    }

    /// Round 4 of the host review: a large snippet is not highlighted (markup per
    /// token made a 240 KB item into megabytes) and is folded; who asked is shown.
    #[test]
    fn large_code_is_shown_plain_and_folded_with_who_asked() {
        let item = pending(serde_json::json!({"code": "1,".repeat(HIGHLIGHTED), "caller": "ci", "tier": "wasm"}));
        let out = render_pending(&item, "csrf", 0, "alice").into_string();
        assert!(out.contains("<details><summary>Code: 32768 bytes") && !out.contains("<span class=\"n\">"), "folded");
        assert!(out.len() < 2 * 32768 + 4096, "{} bytes of markup", out.len());
        assert!(out.contains("Asked by <b id=\"caller-7\">ci</b>"), "who asked");
    }

    /// H5: what the reviewer sees is what runs: bidi controls and invisible
    /// characters become visible marks, in the code and in its tokens.
    #[test]
    fn h5_hidden_characters_are_shown_as_marks() {
        let code = "if access != 'user\u{202E} \u{2066}# admin\u{2069} \u{2066}':\n    x\u{1b}[2K\n";
        let h = highlight(code, &Marks::new()).into_string();
        assert!(!h.chars().any(|c| crate::text::hidden(c).is_some() || c == '\u{1b}'), "{h}");
        assert!(h.contains("title=\"RIGHT-TO-LEFT OVERRIDE\">\u{27E6}U+202E\u{27E7}</mark>"), "{h}");
        assert!(h.contains("\u{27E6}U+2066\u{27E7}") && h.contains("\u{27E6}U+001B\u{27E7}"), "{h}");
        assert_eq!(show("a<b\n", &Marks::new()).into_string(), "a&lt;b\n");
        // Host review round 5: 84,000 zero-width spaces made 5 MB of marks.
        let many = show(&"\u{200B}".repeat(84_000), &Marks::new()).into_string();
        assert!(many.contains("U+200B \u{D7}84000") && many.len() < 200, "{many}");
        let alternating = show(&"\u{200B}\u{200C}".repeat(40_000), &Marks::new()).into_string();
        assert!(alternating.len() < 80_000 * 14, "{} bytes", alternating.len());
        assert_eq!(alternating.matches("<mark").count(), MAX_MARKS);
    }

    fn pending(subject: serde_json::Value) -> Item {
        let kind = if subject.get("argv").is_some() { "command" } else { "execute" };
        Item {
            id: 7,
            kind: kind.into(),
            subject,
            reason: "r".into(),
            status: crate::approval::ApprovalStatus::Pending,
            created_us: 0,
            deadline_us: 0,
            decided_by: None,
            decided_us: None,
            note: None,
            outcome: None,
        }
    }

    /// Review of the maud page (B1): a Cyrillic `а` in a string literal made
    /// `"sаfe"` read as `"safe"`, with no mark, warning or finding. Letters outside
    /// ASCII are now marked where they stand and counted above the item.
    #[test]
    fn b1_letters_outside_ascii_are_marked_and_counted() {
        let code = "mode = \"safe\"\nif mode != \"s\u{0430}fe\":\n    print(\"unsafe branch\")\n";
        let out = render_pending(&pending(serde_json::json!({"code": code})), "csrf", 0, "alice").into_string();
        assert!(out.contains("id=\"letters-7\"") && out.contains("1 letter(s) outside ASCII (U+0430)"), "{out}");
        assert!(out.contains("<mark class=\"letter\" title=\"U+0430\">\u{0430}</mark>"), "{out}");
        // A lone carriage return is a control character: marked and warned about.
        let cr = render_pending(&pending(serde_json::json!({"code": "# note\rimport os"})), "c", 0, "a").into_string();
        assert!(cr.contains("id=\"hidden-7\"") && cr.contains("\u{27E6}U+000D\u{27E7}"), "{cr}");
    }

    /// B2 of the same review: the cap on marks was per call of `show`, that is per
    /// token or per word, so 16 KB of code made a 1 MB item and a 16 KB command
    /// line 600 KB. The marks are now one budget per item.
    #[test]
    fn b2_an_items_marks_are_one_budget_however_its_text_is_cut() {
        let code = format!("#{}\n", "\x01\x02".repeat(32)).repeat(240);
        assert!(code.len() <= HIGHLIGHTED, "highlighted, token by token");
        let out = render_pending(&pending(serde_json::json!({"code": code})), "csrf", 0, "alice").into_string();
        assert!(out.len() < 4 * code.len() + 64 * MAX_MARKS, "{} bytes for {} of code", out.len(), code.len());
        let words: Vec<String> =
            std::iter::once("foo".to_string()).chain(std::iter::repeat_n("\u{034f}\u{00ad}".repeat(32), 126)).collect();
        let line_len: usize = words.iter().map(|w| w.len() + 1).sum();
        let out = render_pending(&pending(serde_json::json!({"argv": words})), "csrf", 0, "alice").into_string();
        assert!(out.len() < 8 * line_len + 64 * MAX_MARKS, "{} bytes for a {line_len}-byte line", out.len());
    }
}
