//! Reviewers' sessions and the request checks that guard them: cookies, same
//! origin, and the refusal of cross-site posts.

use super::*;

pub(super) struct Session {
    pub(super) who: Identity,
    pub(super) csrf: String,
    pub(super) started: Instant,
    pub(super) expires: Instant,
}

/// The review page's sign-ins.
#[derive(Default)]
pub struct Sessions {
    pub(super) map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub(super) fn start(&self, who: Identity) -> Option<String> {
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
        let id = crate::hex::random(32)?;
        map.insert(id.clone(), Session { who, csrf: crate::hex::random(16)?, started: now, expires: now + SESSION });
        Some(id)
    }

    /// The session's identity and CSRF token.
    pub(super) fn find(&self, headers: &HeaderMap) -> Option<(Identity, String)> {
        let id = session_id(headers)?;
        let map = self.map.lock().ok()?;
        let s = map.get(id).filter(|s| s.expires > Instant::now())?;
        Some((s.who.clone(), s.csrf.clone()))
    }

    /// Whether the request carries a live session (for admission).
    pub(crate) fn signed_in(&self, headers: &HeaderMap) -> bool {
        self.find(headers).is_some()
    }

    pub(super) fn end(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut map)) = (session_id(headers), self.map.lock()) {
            map.remove(id);
        }
    }
}

/// The session id in the request's cookies.
pub(super) fn session_id(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

/// Every value cookie `name` has in the request.
pub(super) fn cookie_values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
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
pub(super) fn cookie<'h>(headers: &'h HeaderMap, name: &'h str) -> Option<&'h str> {
    let mut found = cookie_values(headers, name);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Whether a form post comes from this server's own pages, as far as the browser
/// says: `Sec-Fetch-Site` must be `same-origin` (or `none`, typed by the user) and
/// `Origin` must be this Host. Another port on the same host is another origin but
/// the same site, so `SameSite` cookies alone do not stop it. A client that sends
/// neither header is not a browser, and has no ambient credentials to abuse.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
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
pub(super) fn tossed(headers: &HeaderMap) -> Option<Response> {
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
pub(super) fn cross_origin() -> Response {
    problem(StatusCode::FORBIDDEN, "this form was posted from another origin")
}
