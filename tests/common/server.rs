//! A real `terrarium serve` child on a loopback port, and a minimal HTTP/1.1
//! client (one request per connection) to talk to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// Tokens every test server knows: name, roles, token.
pub const ADMIN: &str = "root-token-0123456789abcdef0123456789abcdef";
pub const SUBMIT: &str = "ci-token-0123456789abcdef0123456789abcdef00";
pub const APPROVE: &str = "alice-token-0123456789abcdef0123456789abcdef";

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub home: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    args: Vec<std::ffi::OsString>,
}

impl Server {
    /// Starts `terrarium serve` with `policy` (YAML; `None`: the built-in one) and
    /// `extra` arguments, in a fresh `TERRARIUM_HOME`.
    pub fn start(policy: Option<&str>, extra: &[&str]) -> Server {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().expect("home");
        let tokens = home.path().join("tokens");
        std::fs::write(&tokens, format!("root admin {ADMIN}\nci submit {SUBMIT}\nalice approve {APPROVE}\n"))
            .expect("tokens");
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut args: Vec<std::ffi::OsString> =
            vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into(), "--token-file".into(), tokens.into()];
        args.extend(extra.iter().map(Into::into));
        if let Some(p) = policy {
            let path = home.path().join("policy.yaml");
            std::fs::write(&path, p).expect("policy");
            args.extend(["--policy".into(), path.into()]);
        }
        let (child, addr, log) = spawn(home.path(), &args);
        Server { child, addr, home, log, args }
    }

    /// Stops the server (SIGTERM) and starts it again with the same arguments in
    /// the same home (on a new port).
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "the server exited {status:?}: {}", self.log());
        let (child, addr, log) = spawn(self.home.path(), &self.args);
        (self.child, self.addr, self.log) = (child, addr, log);
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most 60 s) for the server to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        #[allow(unsafe_code, reason = "sending a signal has no safe wrapper in std")]
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the server did not exit on SIGTERM: {}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `terrarium ARGS` against this server's home (audit log, approvals).
    pub fn cli(&self, args: &[&str]) -> super::Output {
        super::terrarium_env(args, b"", &[("TERRARIUM_HOME", &self.home.path().to_string_lossy())])
    }

    /// One request.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        call(self.addr, method, path, token, body.map(|b| b.as_bytes()), &[])
    }
}

/// Spawns `terrarium ARGS` in `home` and waits for the address it serves on.
fn spawn(home: &std::path::Path, args: &[std::ffi::OsString]) -> (Child, SocketAddr, Arc<Mutex<String>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_terrarium"));
    cmd.args(args).env("TERRARIUM_HOME", home).env_remove("TERRARIUM_TOKEN");
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("terrarium: serving on http://")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.to_string());
            }
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let addr = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(a) => a.parse().expect("address"),
        Err(_) => {
            let _ = child.kill();
            panic!("terrarium serve did not start: {}", log.lock().map(|l| l.clone()).unwrap_or_default());
        }
    };
    (child, addr, log)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// The text of a request (one per connection).
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or(b"");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) && !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Parses a whole HTTP/1.1 response (the server closed the connection after it).
pub fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Reply { status, headers, body: body.to_string() }
}

/// One request on a fresh connection.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(&request_bytes(addr, method, path, token, body, headers)).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    parse_reply(&raw)
}

/// Signs in to the review page as a browser does: loads the sign-in form (which
/// sets its check cookie), then posts `token` with the form's check value and the
/// cookie. The reply to the post.
pub fn sign_in(addr: SocketAddr, token: &str) -> Reply {
    let page = call(addr, "GET", "/review", None, None, &[]);
    let check = page.body.split("name=\"check\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
    let cookie = page.header("set-cookie").and_then(|c| c.split(';').next()).unwrap_or("").to_string();
    let form = format!("token={token}&check={check}");
    call(
        addr,
        "POST",
        "/review/login",
        None,
        Some(form.as_bytes()),
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", &cookie)],
    )
}
