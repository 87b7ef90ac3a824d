//! The `/review` page in a real headless Chromium, driven over WebDriver: sign in,
//! see the pending run with its code, approve it, see the run complete; a snippet
//! that carries markup is shown as text, never run by the page, and is denied.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};

use crate::common::server::{APPROVE, SUBMIT, Server, call};

/// Skips the browser test (printed when used).
const SKIP_BROWSER: &str = "TERRARIUM_SKIP_BROWSER";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free loopback port.
fn start_chromedriver() -> (Driver, u16) {
    let exe = std::env::var("TERRARIUM_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let child = Command::new(&exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {exe} ({e}): the browser test needs Chromium and its driver \
                 (apt-get install chromium chromium-driver, as scripts/test does), \
                 or set {SKIP_BROWSER}=1 to skip it"
            )
        });
    let driver = Driver(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "chromedriver did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (driver, port)
}

#[test]
#[cfg_attr(terrarium_skip_browser, ignore = "TERRARIUM_SKIP_BROWSER=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn slow_a_reviewer_approves_a_pending_run_in_the_browser_and_sees_it_complete() {
    let policy = format!(
        "{}\napprovals:\n  critical: [docker_tier]\n  timeout: 120\n",
        crate::common::default_policy_with("python:3.12-slim", crate::common::DOCKER_IMAGE)
    );
    let s = Server::start(Some(&policy), &[]);
    let (_driver, port) = start_chromedriver();
    let profile = tempfile::tempdir().expect("profile");
    let addr = s.addr;
    let good = std::thread::spawn(move || {
        let body = r#"{"code": "print(6 * 7)", "tier": "docker"}"#;
        call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(body.as_bytes()), &[])
    });
    let first = crate::server::first_pending(&s);
    let id = first["id"].as_i64().expect("id");
    let evil = std::thread::spawn(move || {
        let body = r#"{"code": "x = '</pre><script>document.title = \"owned\"</script>'", "tier": "docker"}"#;
        call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(body.as_bytes()), &[])
    });
    let base = format!("http://{}", s.addr);
    let result = in_chromium(port, profile.path(), |c| Box::pin(async move { review(c, &base, id).await }));
    result.unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.log()));
    let done = good.join().expect("client");
    let v = done.json();
    assert_eq!((done.status, v["status"].as_str(), v["stdout"].as_str()), (200, Some("ok"), Some("42\n")), "{v}");
    let denied = evil.join().expect("client").json();
    assert_eq!((denied["status"].as_str(), denied["error"]["type"].as_str()), (Some("denied"), Some("NotApproved")));
    assert!(denied["error"]["message"].as_str().unwrap_or("").contains("denied by alice"), "{denied}");
}

/// Runs `drive` in a new headless Chromium session on chromedriver at `port`.
fn in_chromium(
    port: u16,
    profile: &std::path::Path,
    drive: impl for<'c> FnOnce(
        &'c fantoccini::Client,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + 'c>>,
) -> Result<(), String> {
    crate::common::runtime().block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": std::env::var("TERRARIUM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|e| format!("cannot start a Chromium session: {e}"))?;
        let r = drive(&c).await;
        let _ = c.close().await;
        r
    })
}

#[test]
#[cfg_attr(terrarium_skip_browser, ignore = "TERRARIUM_SKIP_BROWSER=1")]
fn slow_a_reviewer_sees_a_pending_host_call_with_its_arguments_and_approves_it() {
    // A critical host function, implemented by the operator's command (`cat`
    // answers with the call itself).
    let policy = format!(
        "{}\nfunctions:\n  transfer:\n    critical: true\n    command: [/bin/cat]\napprovals:\n  timeout: 120\n",
        terrarium::policy::DEFAULT_POLICY_YAML
    );
    let s = Server::start(Some(&policy), &[]);
    let (_driver, port) = start_chromedriver();
    let profile = tempfile::tempdir().expect("profile");
    let addr = s.addr;
    let run = std::thread::spawn(move || {
        let body =
            r#"{"code": "from host import transfer\nr = transfer('<b>acct</b>', amount=125)\nr['kwargs']['amount']"}"#;
        call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(body.as_bytes()), &[])
    });
    let first = crate::server::first_pending(&s);
    let id = first["id"].as_i64().expect("id");
    assert_eq!(first["kind"], "function_call", "{first}");
    let base = format!("http://{}", s.addr);
    let result = in_chromium(port, profile.path(), |c| {
        Box::pin(async move {
            let e = |what: &'static str| move |err: fantoccini::error::CmdError| format!("{what}: {err}");
            let wait = Duration::from_secs(30);
            open_item(c, &base, id).await?;
            let (function, arguments) = (text_of(c, "function", id).await?, text_of(c, "arguments", id).await?);
            if function != "transfer" || !arguments.contains("<b>acct</b>") || !arguments.contains("\"amount\": 125") {
                return Err(format!("the call is not shown as made: {function} {arguments}"));
            }
            click(c, &format!("approve-{id}")).await.map_err(e("approve"))?;
            c.wait().at_most(wait).for_element(Locator::Id(&format!("done-{id}"))).await.map_err(e("decided"))?;
            Ok(())
        })
    });
    result.unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.log()));
    let done = run.join().expect("client").json();
    assert_eq!((done["status"].as_str(), done["result"].as_i64()), (Some("ok"), Some(125)), "{done}");
    assert_eq!(done["calls"][0]["status"], "ok", "{done}");
}

/// Signs in on the review page as the approver and waits for item `id`.
async fn open_item(c: &fantoccini::Client, base: &str, id: i64) -> Result<(), String> {
    let e = |what: &'static str| move |err: fantoccini::error::CmdError| format!("{what}: {err}");
    c.goto(&format!("{base}/review")).await.map_err(e("load /review"))?;
    c.find(Locator::Id("token")).await.map_err(e("token"))?.send_keys(APPROVE).await.map_err(e("type"))?;
    c.find(Locator::Id("login")).await.map_err(e("sign in"))?.click().await.map_err(e("click"))?;
    let item = Locator::Id(&format!("item-{id}"));
    c.wait().at_most(Duration::from_secs(30)).for_element(item).await.map_err(e("the item"))?;
    Ok(())
}

/// The text of element `WHAT-ID` on the page.
async fn text_of(c: &fantoccini::Client, what: &str, id: i64) -> Result<String, String> {
    let el = c.find(Locator::Id(&format!("{what}-{id}"))).await.map_err(|err| format!("{what}: {err}"))?;
    el.text().await.map_err(|err| format!("{what} text: {err}"))
}

/// The browser's part; every failure says what it expected.
async fn review(c: &fantoccini::Client, base: &str, id: i64) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: fantoccini::error::CmdError| format!("{what}: {err}")
    };
    let wait = Duration::from_secs(30);
    c.goto(&format!("{base}/review")).await.map_err(e("load /review"))?;
    // A token without the approve role does not sign in.
    c.find(Locator::Id("token")).await.map_err(e("token field"))?.send_keys(SUBMIT).await.map_err(e("type"))?;
    c.find(Locator::Id("login")).await.map_err(e("sign-in button"))?.click().await.map_err(e("click"))?;
    // The refusal page replaces the form once the submission is answered.
    c.wait()
        .at_most(wait)
        .for_element(Locator::XPath("//p[@id='message' and contains(., 'lacks the approve role')]"))
        .await
        .map_err(e("the refusal of a submit-only token"))?;
    if c.find(Locator::Id("who")).await.is_ok() {
        return Err("a submit-only token signed in".into());
    }
    c.find(Locator::Id("token")).await.map_err(e("token field"))?.send_keys(APPROVE).await.map_err(e("type"))?;
    c.find(Locator::Id("login")).await.map_err(e("sign-in button"))?.click().await.map_err(e("click"))?;
    let who = c.wait().at_most(wait).for_element(Locator::Id("who")).await.map_err(e("signed in"))?;
    if who.text().await.map_err(e("who"))? != "alice" {
        return Err("signed in as someone else".into());
    }
    // The pending run: its code (highlighted), its tier, the policy.
    let item = format!("item-{id}");
    c.wait().at_most(wait).for_element(Locator::Id(&item)).await.map_err(e("the pending item"))?;
    let code = c.find(Locator::Id(&format!("code-{id}"))).await.map_err(e("code"))?;
    let html = code.html(true).await.map_err(e("code html"))?;
    if !(html.contains("class=\"n\">6</span>") && code.text().await.map_err(e("code text"))? == "print(6 * 7)") {
        return Err(format!("the code is not shown highlighted: {html}"));
    }
    let tier = c.find(Locator::Id(&format!("tier-{id}"))).await.map_err(e("tier"))?.text().await.map_err(e("tier"))?;
    if tier != "docker" {
        return Err(format!("tier shown: {tier}"));
    }
    c.find(Locator::Id(&format!("policy-{id}"))).await.map_err(e("the policy"))?;
    // The second item carries markup: shown as text, never run.
    let evil_id = id + 1;
    let evil = c
        .wait()
        .at_most(wait)
        .for_element(Locator::Id(&format!("code-{evil_id}")))
        .await
        .map_err(e("the second item (the page reloads when the queue changes)"))?;
    let text = evil.text().await.map_err(e("evil text"))?;
    if !text.contains("<script>document.title") {
        return Err(format!("the markup is not shown as text: {text}"));
    }
    if c.title().await.map_err(e("title"))? == "owned" {
        return Err("the snippet's script ran in the reviewer's page".into());
    }
    // Decide both.
    c.find(Locator::Id(&format!("deny-note-{evil_id}")))
        .await
        .map_err(e("note"))?
        .send_keys("markup in a snippet")
        .await
        .map_err(e("type"))?;
    click(c, &format!("deny-{evil_id}")).await.map_err(e("deny"))?;
    c.wait().at_most(wait).for_element(Locator::Id(&format!("approve-{id}"))).await.map_err(e("back on the page"))?;
    click(c, &format!("approve-{id}")).await.map_err(e("approve"))?;
    // The run completes; the page reloads itself and shows how it ended.
    let outcome =
        c.wait().at_most(wait).for_element(Locator::Id(&format!("outcome-{id}"))).await.map_err(e("the outcome"))?;
    let status = outcome.text().await.map_err(e("outcome"))?;
    let output =
        c.find(Locator::Id(&format!("output-{id}"))).await.map_err(e("output"))?.text().await.map_err(e("o"))?;
    if status != "ok" || output.trim() != "42" {
        return Err(format!("the run ended {status}: {output}"));
    }
    let evil_status =
        c.find(Locator::Id(&format!("status-{evil_id}"))).await.map_err(e("status"))?.text().await.map_err(e("s"))?;
    if evil_status != "denied" {
        return Err(format!("the second item is {evil_status}"));
    }
    Ok(())
}

/// Finds the button and clicks it. The page reloads itself when the queue changes, which
/// can happen between finding a button and clicking it: a stale button was never clicked,
/// so it is found again on the reloaded page.
async fn click(c: &fantoccini::Client, id: &str) -> Result<(), fantoccini::error::CmdError> {
    let mut tries = 0;
    loop {
        let r = match c.wait().at_most(Duration::from_secs(30)).for_element(Locator::Id(id)).await {
            Ok(button) => button.click().await,
            Err(err) => Err(err),
        };
        match r {
            Err(err) if tries < 5 && err.to_string().contains("stale element") => tries += 1,
            r => return r,
        }
    }
}

#[test]
#[cfg_attr(terrarium_skip_browser, ignore = "TERRARIUM_SKIP_BROWSER=1")]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn slow_a_reviewer_reads_a_workspace_change_set_with_its_diff_and_approves_it() {
    if !crate::workspace::ready(terrarium::Tier::Wasm) {
        return;
    }
    let policy = format!(
        "{}\nworkspaces:\n  allow: [\"*\"]\napprovals:\n  critical: [workspace_change]\n  timeout: 120\n",
        terrarium::policy::DEFAULT_POLICY_YAML
    );
    let s = Server::start(Some(&policy), &[]);
    let (_driver, port) = start_chromedriver();
    let profile = tempfile::tempdir().expect("profile");
    let addr = s.addr;
    let run = std::thread::spawn(move || {
        let body = r#"{"code": "open('notes.md', 'w').write('# Plan\\n<b>ship</b> it\\n')", "tier": "wasm", "workspace": "docs"}"#;
        call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(body.as_bytes()), &[])
    });
    let first = crate::server::first_pending(&s);
    let id = first["id"].as_i64().expect("id");
    assert_eq!(first["kind"], "workspace_change", "{first}");
    let base = format!("http://{}", s.addr);
    let result = in_chromium(port, profile.path(), |c| {
        Box::pin(async move {
            let e = |what: &'static str| move |err: fantoccini::error::CmdError| format!("{what}: {err}");
            let wait = Duration::from_secs(30);
            open_item(c, &base, id).await?;
            let workspace = text_of(c, "workspace", id).await?;
            let (changes, diff) = (text_of(c, "changes", id).await?, text_of(c, "diff", id).await?);
            if workspace != "docs" || !changes.contains("notes.md") || !changes.contains("added") {
                return Err(format!("the change set is not shown: {workspace} {changes}"));
            }
            // The file's markup is text on the page, line by line as added.
            if !diff.contains("+++ b/notes.md") || !diff.contains("+# Plan") || !diff.contains("+<b>ship</b> it") {
                return Err(format!("the diff is not shown as text: {diff}"));
            }
            click(c, &format!("approve-{id}")).await.map_err(e("approve"))?;
            c.wait().at_most(wait).for_element(Locator::Id(&format!("done-{id}"))).await.map_err(e("decided"))?;
            Ok(())
        })
    });
    result.unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.log()));
    let done = run.join().expect("client").json();
    assert_eq!(
        (done["status"].as_str(), done["workspace"]["status"].as_str()),
        (Some("ok"), Some("committed")),
        "{done}"
    );
    let live = s.home.path().join("workspaces/docs/live/notes.md");
    assert_eq!(std::fs::read_to_string(live).expect("approved and kept"), "# Plan\n<b>ship</b> it\n");
}
