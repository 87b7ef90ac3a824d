//! Bearer tokens and their roles.
//!
//! A token file has one token per line: `NAME ROLES TOKEN`, where `ROLES` is a
//! comma-separated subset of `submit`, `approve`, `admin` (`admin` may do
//! everything); a word that starts with `#` starts a comment. Tokens are printable
//! ASCII without `#` (one with it is refused, never cut short). `TERRARIUM_TOKEN`
//! adds one token named `env`
//! with every role.
//!
//! # Security invariant
//! Tokens are kept only as SHA-256 digests, and a presented token is compared with
//! every known digest in constant time (no early exit on the first differing byte,
//! none on the first match), so response timing says nothing about how close a
//! guess was. A token file readable by others is refused.

use std::collections::BTreeSet;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Shortest token accepted: 128 bits of hex.
pub const MIN_TOKEN_LEN: usize = 32;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Run snippets and commands.
    Submit,
    /// See and decide the approvals queue (and use the review page).
    Approve,
    /// Everything, and the breakers and metrics.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "submit" => Some(Role::Submit),
            "approve" => Some(Role::Approve),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submit => "submit",
            Role::Approve => "approve",
            Role::Admin => "admin",
        }
    }
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name (recorded as who decided, who submitted).
    pub name: String,
    /// Its roles.
    pub roles: BTreeSet<Role>,
}

impl Identity {
    /// Whether it may act as `role`.
    pub fn can(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

/// A token file, or a token, that cannot be used: the message names the file and
/// line where there is one, never a token's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(String);

/// The known tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Identity)>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses a token file's text (`origin` names it in errors).
    ///
    /// # Errors
    /// A malformed line, an unknown role, a short token, a repeated name or token.
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, TokenError> {
        let mut tokens = Tokens::default();
        for (n, line) in text.lines().enumerate() {
            // A comment starts at a word that starts with `#`; a `#` inside a word is
            // part of it (and refused below when that word is the token).
            let comment = line
                .char_indices()
                .find(|&(i, c)| c == '#' && line[..i].chars().next_back().is_none_or(char::is_whitespace))
                .map_or(line.len(), |(i, _)| i);
            let line = line[..comment].trim();
            if line.is_empty() {
                continue;
            }
            let at = |msg: String| TokenError(format!("{origin}:{}: {msg}", n + 1));
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, roles, token] = words[..] else {
                return Err(at("expected NAME ROLES TOKEN".into()));
            };
            let mut set = BTreeSet::new();
            for r in roles.split(',') {
                set.insert(Role::parse(r).ok_or_else(|| at(format!("{r:?} is not submit, approve or admin")))?);
            }
            tokens.add(name, set, token).map_err(|e| at(e.0))?;
        }
        if tokens.entries.is_empty() {
            return Err(TokenError(format!("{origin}: no tokens")));
        }
        Ok(tokens)
    }

    /// Reads a token file; refuses one that others can read.
    ///
    /// # Errors
    /// The file cannot be read, is readable by group or others, or does not parse.
    pub fn from_file(path: &Path) -> Result<Tokens, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| TokenError(format!("{shown}: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError(format!("{shown}: mode {mode:03o} lets others read the tokens; chmod 600 it")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| TokenError(format!("{shown}: {e}")))?;
        Tokens::parse(&text, &shown.to_string())
    }

    /// Adds one token.
    ///
    /// # Errors
    /// The token is short or known, or the name is taken or not a plain word.
    pub fn add(&mut self, name: &str, roles: BTreeSet<Role>, token: &str) -> Result<(), TokenError> {
        if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError(format!(
                "the token of {name:?} is shorter than {MIN_TOKEN_LEN} characters or not one word"
            )));
        }
        if !token.chars().all(|c| c.is_ascii_graphic() && c != '#') {
            return Err(TokenError(format!(
                "the token of {name:?} has `#` or a non-ASCII character; use letters and digits"
            )));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
            return Err(TokenError(format!("{name:?} is not a token name (letters, digits, - _ . @)")));
        }
        if self.entries.iter().any(|(_, id)| id.name == name) {
            return Err(TokenError(format!("two tokens are named {name:?}")));
        }
        let d = digest(token);
        if self.entries.iter().any(|(e, _)| *e == d) {
            return Err(TokenError(format!("the token of {name:?} is also another name's")));
        }
        self.entries.push((d, Identity { name: name.to_string(), roles }));
        Ok(())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Who `presented` belongs to. Every entry is compared, in constant time.
    pub fn identify(&self, presented: &str) -> Option<&Identity> {
        let d = digest(presented);
        let mut found = None;
        for (known, id) in &self.entries {
            if constant_time_eq(known, &d) {
                found = Some(id);
            }
        }
        found
    }
}

/// Compares two digests without branching on their bytes.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]))
}

/// Whether two secrets are equal, compared in constant time (by digest).
pub fn same_secret(a: &str, b: &str) -> bool {
    constant_time_eq(&digest(a), &digest(b))
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_token_file_names_tokens_and_their_roles() {
        let t = Tokens::parse(&format!("# who\nalice approve {A}\nci submit,approve {B} # ci\n"), "t").expect("parse");
        let alice = t.identify(A).expect("alice");
        assert_eq!(alice.name, "alice");
        assert!(alice.can(Role::Approve) && !alice.can(Role::Submit) && !alice.can(Role::Admin));
        assert!(t.identify(B).expect("ci").can(Role::Submit));
        assert!(t.identify("cccccccccccccccccccccccccccccccccccc").is_none());
        assert!(t.identify(&A[1..]).is_none(), "a prefix is not the token");
        let mut root = Tokens::default();
        root.add("env", [Role::Admin].into_iter().collect(), A).expect("add");
        assert!(root.identify(A).expect("env").can(Role::Submit), "admin may do everything");
    }

    #[test]
    fn bad_token_files_are_refused_with_the_line() {
        for (text, needle) in [
            ("", "no tokens"),
            ("alice approve", "expected NAME ROLES TOKEN"),
            (&format!("alice root {A}"), "\"root\" is not"),
            ("alice approve short", "shorter than 32"),
            (&format!("alice approve {A}\nalice submit {B}"), "two tokens are named"),
            (&format!("alice approve {A}\nbob submit {A}"), "also another name's"),
            (&format!("al/ice approve {A}"), "not a token name"),
            // A `#` inside a token once cut it short silently.
            (&format!("alice approve {A}#{B}"), "has `#`"),
            (&format!("alice approve {A}\u{e9}"), "non-ASCII"),
        ] {
            let e = Tokens::parse(text, "tokens").expect_err(text);
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn only_bearer_headers_carry_a_token() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
