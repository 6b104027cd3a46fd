//! A small WebDriver client (W3C protocol, JSON over loopback HTTP) for the
//! console's browser tests: Debian's `chromedriver` driving headless
//! `chromium`. The few commands the tests use are a page of code over
//! reqwest, so no WebDriver crate (and no TLS stack of its own) is needed.
//!
//! One chromedriver serves the whole test binary: it is started on first
//! use from a thread that lives as long as the process, and dies with it
//! (`PR_SET_PDEATHSIG`). Each test opens its own browser session and closes
//! it when dropped, even after a failed assertion.

use std::io::Write as _;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// Where Debian's `chromium-driver` puts the driver.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where Debian's `chromium` puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C name of an element reference in a JSON answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The running chromedriver's base URL, or why there is none.
static DRIVER: OnceLock<Result<String, String>> = OnceLock::new();

/// Serialises the browser tests: one browser at a time on a small machine.
pub static ONE_AT_A_TIME: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));

/// The driver's URL; `None` (with a message) when chromedriver is not
/// installed and `HERALD_REQUIRE_BROWSER` is not `1`, a panic when it is.
pub fn driver() -> Option<String> {
    let got = DRIVER.get_or_init(start_driver).clone();
    match got {
        Ok(url) => Some(url),
        Err(why) if std::env::var("HERALD_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("HERALD_REQUIRE_BROWSER=1 but {why}")
        }
        Err(why) => {
            eprintln!(
                "skipping a browser test: {why} (apt-get install chromium chromium-driver; set HERALD_REQUIRE_BROWSER=1 to fail instead)"
            );
            None
        }
    }
}

fn start_driver() -> Result<String, String> {
    for bin in [CHROMEDRIVER, CHROMIUM] {
        if !std::path::Path::new(bin).exists() {
            return Err(format!("{bin} is not installed"));
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for chromedriver: {e}"))?
        .port();
    let (tx, rx) = std::sync::mpsc::channel();
    // The child must outlive every test thread: PR_SET_PDEATHSIG fires when
    // the thread that spawned it ends, so this thread never does.
    std::thread::spawn(move || {
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn();
        let _ = tx.send(child.map(|_| ()).map_err(|e| e.to_string()));
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot start {CHROMEDRIVER}: {e}"))?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(url);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{CHROMEDRIVER} did not listen on port {port} within 10 s"
    ))
}

/// A WebDriver error or an unexpected answer.
pub type Result<T, E = String> = std::result::Result<T, E>;

/// One headless browser.
pub struct Browser {
    client: reqwest::Client,
    /// `{driver}/session/{id}`.
    base: String,
}

/// An element on the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// A new headless Chromium, 1280 x `height` pixels, with page scripts
    /// on or off.
    pub async fn open(driver: &str, javascript: bool, height: u32) -> Browser {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let mut prefs = json!({});
        if !javascript {
            prefs["profile.managed_default_content_settings.javascript"] = json!(2);
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--no-first-run",
                    "--disable-extensions", "--hide-scrollbars",
                    format!("--window-size=1280,{height}"),
                ],
                "prefs": prefs,
            }
        }}});
        let r: Value = client
            .post(format!("{driver}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON");
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {r}"));
        Browser {
            base: format!("{driver}/session/{id}"),
            client,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{}: {}",
                v["value"]["error"].as_str().unwrap_or("error"),
                v["value"]["message"].as_str().unwrap_or("")
            ))
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Shows pages as a browser set to a dark theme does
    /// (`prefers-color-scheme: dark`, by Chromium's DevTools protocol), or
    /// back to light.
    pub async fn color_scheme(&self, scheme: &str) {
        self.post(
            "/goog/cdp/execute",
            json!({ "cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{ "name": "prefers-color-scheme", "value": scheme }]
            }}),
        )
        .await
        .unwrap_or_else(|e| panic!("emulate prefers-color-scheme: {scheme}: {e}"));
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The address of the page shown.
    pub async fn url(&self) -> String {
        self.get("/url")
            .await
            .expect("url")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits (up to 10 s) for the page shown to be at an address ending
    /// with `suffix`: a click that submits a form may return before the
    /// next page has loaded. Panics with the address it is at instead.
    pub async fn wait_for_url(&self, suffix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if url.ends_with(suffix) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still at {url}, not at …{suffix}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 10 s) for an element matching `selector` to appear.
    pub async fn wait_for(&self, selector: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find(selector).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no `{selector}` on {} after 10 s",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's title.
    pub async fn title(&self) -> String {
        self.get("/title")
            .await
            .expect("title")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's HTML as the browser holds it.
    pub async fn source(&self) -> String {
        self.get("/source")
            .await
            .expect("source")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching CSS `selector`, if any.
    pub async fn find(&self, selector: &str) -> Option<Element> {
        let v = self
            .post(
                "/element",
                json!({ "using": "css selector", "value": selector }),
            )
            .await
            .ok()?;
        Some(Element(v[ELEMENT].as_str()?.to_string()))
    }

    /// The first element matching `selector`; a panic when there is none.
    pub async fn the(&self, selector: &str) -> Element {
        match self.find(selector).await {
            Some(e) => e,
            None => panic!(
                "no `{selector}` on {} ({})",
                self.url().await,
                self.title().await
            ),
        }
    }

    /// Every element matching `selector`.
    pub async fn all(&self, selector: &str) -> Vec<Element> {
        let v = self
            .post(
                "/elements",
                json!({ "using": "css selector", "value": selector }),
            )
            .await
            .expect("elements");
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What a person reads in `e` (its rendered text).
    pub async fn text(&self, e: &Element) -> String {
        self.get(&format!("/element/{}/text", e.0))
            .await
            .expect("text")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The text of the first `selector`.
    pub async fn text_of(&self, selector: &str) -> String {
        let e = self.the(selector).await;
        self.text(&e).await
    }

    /// Clicks `e` (and waits for a page it opens to load).
    pub async fn click(&self, e: &Element) {
        self.post(&format!("/element/{}/click", e.0), json!({}))
            .await
            .expect("click");
    }

    /// Clicks the first `selector`.
    pub async fn click_on(&self, selector: &str) {
        let e = self.the(selector).await;
        self.click(&e).await;
    }

    /// Types `text` into `e`.
    pub async fn type_into(&self, e: &Element, text: &str) {
        self.post(&format!("/element/{}/value", e.0), json!({ "text": text }))
            .await
            .expect("type");
    }

    /// The names of the cookies the browser holds for the page shown.
    pub async fn cookie_names(&self) -> Vec<String> {
        let v = self.get("/cookie").await.expect("cookies");
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `script` in the page (through the driver: works with page scripts off).
    pub async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
            .expect("script")
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self.get("/screenshot").await.expect("screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("base64 PNG")
    }
}

impl Drop for Browser {
    /// Closes the browser: a plain `DELETE` over a blocking socket, since
    /// drop cannot await and may run while a failed test unwinds.
    fn drop(&mut self) {
        let Some(rest) = self.base.strip_prefix("http://") else {
            return;
        };
        let Some((host, path)) = rest.split_once('/') else {
            return;
        };
        if let Ok(mut s) = TcpStream::connect(host) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = std::io::Read::read(&mut s, &mut [0u8; 512]);
        }
    }
}
