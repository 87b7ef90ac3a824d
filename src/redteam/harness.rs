//! What the red-team harness plants on the host and watches: a secret (in a file
//! and, from the command line, in this process's environment), a directory where
//! marker files would appear, and a listener (TCP and UDP, every host address, one
//! port) that records anything that reaches it. An attack succeeds only by an
//! effect seen here; what a run prints about itself is not evidence.
//!
//! # Security
//! The directory and the files in it are world-readable and the marker directory
//! world-writable on purpose: file modes must not be what stops an attack, the
//! tier must.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable that holds the planted secret (see [`plant_env_secret`]).
pub const SECRET_ENV: &str = "TERRARIUM_REDTEAM_SECRET";

/// What every run token starts with; a token seen in an outcome other than its
/// own run's is a leak.
pub const TOKEN_PREFIX: &str = "trrmtok";

/// Puts a fresh secret in this process's environment (tiers that inherit it must
/// not hand it to a snippet) and returns it.
///
/// # Safety
/// Changes the process environment: call it before any other thread exists.
#[allow(unsafe_code, reason = "changing the environment is unsafe once threads exist; the caller vouches")]
pub unsafe fn plant_env_secret() -> String {
    let secret = format!("TRRM-ENV-SECRET-{}", random_hex());
    // SAFETY: the caller guarantees that no other thread exists yet.
    unsafe { std::env::set_var(SECRET_ENV, &secret) };
    secret
}

/// 16 random hex digits.
pub fn random_hex() -> String {
    crate::hex::random(8).unwrap_or_else(|| format!("{:016x}", std::process::id()))
}

/// The token-length text starting at byte `at` of `text` (shorter at its end).
fn token_at(text: &str, at: usize) -> String {
    text[at..].chars().take(TOKEN_PREFIX.len() + 16).collect()
}

/// A fresh run token.
pub fn token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex())
}

/// The planted secrets, the marker directory and the listener.
pub struct Watch {
    dir: PathBuf,
    owned: bool,
    secrets: Vec<String>,
    port: u16,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Watch {
    /// Plants a secret file in `dir` (`None`: a new directory under the system's
    /// temporary directory, removed on drop), makes `dir/markers`, and starts the
    /// listener. `dir` must not exist: it is made here, in a parent no other user
    /// can change (checked like Terrarium's own directories), so that nothing
    /// planted in it beforehand (links to host files) is written or chmod-ed.
    ///
    /// # Errors
    /// The directory exists or its parent is refused; the files or the listener
    /// could not be made.
    pub fn start(dir: Option<&Path>) -> std::io::Result<Watch> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let (dir, owned) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => (std::env::temp_dir().join(format!("terrarium-redteam-{}", random_hex())), true),
        };
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::dirs::check_closed(parent, "red team work directory's parent").map_err(std::io::Error::other)?;
        std::fs::create_dir(&dir).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: {e} (the work directory must be new)", dir.display()))
        })?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir(dir.join("markers"))?;
        // Sandboxes (uid 65534 in the docker tier) may add markers, not list or
        // remove others' (sticky).
        std::fs::set_permissions(dir.join("markers"), std::fs::Permissions::from_mode(0o1733))?;
        let secret = format!("TRRM-FILE-SECRET-{}", random_hex());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join("secret.txt"))?;
        f.write_all(secret.as_bytes())?;
        std::fs::set_permissions(dir.join("secret.txt"), std::fs::Permissions::from_mode(0o644))?;
        let mut secrets = vec![secret];
        if let Ok(s) = std::env::var(SECRET_ENV) {
            secrets.push(s);
        }
        let tcp = TcpListener::bind(("0.0.0.0", 0))?;
        let port = tcp.local_addr()?.port();
        let udp = UdpSocket::bind(("0.0.0.0", port))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::Builder::new().name("redteam-tcp".into()).spawn(move || {
            for stream in tcp.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = vec![0u8; 256];
                let n = stream.read(&mut buf).unwrap_or(0);
                buf.truncate(n);
                // A connection counts even when it sends nothing.
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
            }
        })?;
        let sink = received.clone();
        std::thread::Builder::new().name("redteam-udp".into()).spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok((n, _)) = udp.recv_from(&mut buf) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(buf[..n].to_vec());
            }
        })?;
        Ok(Watch { dir, owned, secrets, port, received })
    }

    /// `code` with the placeholders filled in for the run `token`:
    /// `{{SECRET_PATH}}`, `{{SECRET_DIR}}`, `{{MARKER}}`, `{{MARKER_DIR}}`, `{{PORT}}`,
    /// `{{TOKEN}}`, `{{SECRET_ENV}}`.
    pub fn fill(&self, code: &str, token: &str) -> String {
        code.replace("{{SECRET_PATH}}", &self.dir.join("secret.txt").to_string_lossy())
            .replace("{{SECRET_DIR}}", &self.dir.to_string_lossy())
            .replace("{{MARKER_DIR}}", &self.dir.join("markers").to_string_lossy())
            .replace("{{MARKER}}", &self.dir.join("markers").join(token).to_string_lossy())
            .replace("{{PORT}}", &self.port.to_string())
            .replace("{{TOKEN}}", token)
            .replace("{{SECRET_ENV}}", SECRET_ENV)
    }

    /// The host effects visible in `text` (what a run returned): a planted secret,
    /// or a run token other than `own`.
    pub fn effects_in(&self, text: &str, own: &str) -> Vec<String> {
        let mut found = Vec::new();
        if self.secrets.iter().any(|s| text.contains(s.as_str())) {
            found.push("secret_read: a planted secret is in the outcome".to_string());
        }
        for (at, _) in text.match_indices(TOKEN_PREFIX) {
            let candidate = token_at(text, at);
            if candidate.len() == TOKEN_PREFIX.len() + 16
                && candidate[TOKEN_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
                && candidate != own
            {
                found.push(format!("state_leak: another run's token {candidate} is in the outcome"));
                break;
            }
        }
        found
    }

    /// Effects on the host so far: marker files (by name) and what the listener
    /// received, as (token or `None` when unattributable, description).
    pub fn host_effects(&self) -> Vec<(Option<String>, String)> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("markers")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let token = name.starts_with(TOKEN_PREFIX).then(|| token_at(&name, 0));
                out.push((token, format!("marker_file: {name} was created on the host")));
            }
        }
        for bytes in self.received.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let text = String::from_utf8_lossy(bytes);
            let token = text.find(TOKEN_PREFIX).map(|at| token_at(&text, at));
            out.push((
                token,
                format!("connection: the host listener received {:?}", text.chars().take(64).collect::<String>()),
            ));
        }
        out
    }

    /// The listener's port.
    #[cfg(test)]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory the secret and markers are in.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What an interpreter-tier run's outcome shows it reached inside the interpreter:
/// a module outside `allowed`, the real builtins (`exec`, `open`, `__import__`,
/// ... as the builtin functions themselves), a frame, a code object or the import
/// machinery. On the interpreter tier these are capabilities even with no host
/// effect, because the walls there are the interpreter's own. (On the CPython
/// tiers they are not: the wall is WASI or the container, and the interpreter's
/// internals are the guest's.)
pub fn capabilities_in(text: &str, allowed: &std::collections::BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("<module '") {
        let rest = &text[at + "<module '".len()..];
        let name = rest.split('\'').next().unwrap_or_default();
        if !crate::policy::module_allowed(allowed, name) {
            found.push(format!("capability: module {name:?}, outside the policy, reached"));
        }
    }
    for real in ["exec", "eval", "compile", "open", "__import__", "breakpoint", "input", "vars", "__build_class__"] {
        if text.contains(&format!("<built-in function {real}>")) {
            found.push(format!("capability: the real builtin {real}() reached"));
        }
    }
    for (sign, what) in [
        ("<frame ", "a frame"),
        ("<code object", "a code object"),
        ("_frozen_importlib", "the import machinery"),
        ("BuiltinImporter", "the import machinery"),
        ("FrozenImporter", "the import machinery"),
    ] {
        if text.contains(sign) {
            found.push(format!("capability: {what} reached"));
        }
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_kind_of_effect_is_seen_and_attributed() {
        let w = Watch::start(None).expect("watch");
        let tok = token();
        let code = w.fill("open('{{SECRET_PATH}}'); m = '{{MARKER}}'; p = {{PORT}}; t = '{{TOKEN}}'", &tok);
        assert!(!code.contains("{{"), "{code}");
        let secret = std::fs::read_to_string(w.dir().join("secret.txt")).expect("secret");
        assert_eq!(w.effects_in(&format!("x {secret} y"), &tok).len(), 1);
        assert!(w.effects_in(&format!("{tok} is mine"), &tok).is_empty());
        let other = token();
        assert!(w.effects_in(&format!("saw {other}"), &tok)[0].starts_with("state_leak"));
        assert!(w.host_effects().is_empty());
        std::fs::write(w.dir().join("markers").join(&tok), "x").expect("marker");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port())).expect("connect");
        s.write_all(other.as_bytes()).expect("send");
        drop(s);
        UdpSocket::bind("127.0.0.1:0").expect("udp").send_to(b"hello", ("127.0.0.1", w.port())).expect("datagram");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while w.host_effects().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let effects = w.host_effects();
        assert_eq!(effects.len(), 3, "{effects:?}");
        assert!(effects.iter().any(|(t, d)| t.as_deref() == Some(tok.as_str()) && d.starts_with("marker_file")));
        assert!(effects.iter().any(|(t, d)| t.as_deref() == Some(other.as_str()) && d.starts_with("connection")));
        assert!(effects.iter().any(|(t, _)| t.is_none()), "an unsigned datagram is still an effect");
        let dir = w.dir().to_path_buf();
        drop(w);
        assert!(!dir.exists(), "the harness cleans up its own directory");
    }

    #[test]
    fn capabilities_are_read_from_what_a_run_printed() {
        let allowed: std::collections::BTreeSet<String> = ["json".to_string(), "math".to_string()].into();
        assert!(capabilities_in("<module 'json'> <module 'json.decoder'> 42", &allowed).is_empty());
        let found =
            capabilities_in("<module 'sys' (built-in)> <built-in function exec> <frame object at 0x1>", &allowed);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(capabilities_in("<code object f at 0x1>", &allowed)[0].contains("code object"));
        assert!(capabilities_in("<function _denied_builtin.<locals>.denied at 0x1>", &allowed).is_empty());
    }
}
