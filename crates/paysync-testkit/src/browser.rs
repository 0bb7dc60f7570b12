//! A headless Chromium for the console's browser tests, driven through WebDriver (`fantoccini`).
//!
//! Each [`Browser`] owns its own `chromedriver` on a free loopback port, its own profile and its
//! own temporary directory, so tests run in parallel without sharing anything; dropping it kills
//! chromedriver and every Chromium process it started (they share a process group) and removes
//! the directory, even when the test panicked.
//!
//! Rule of thumb: sizes are CSS pixels and are checked, never assumed: [`Browser::set_width`]
//! reads `window.innerWidth` back, and screenshots are taken at a device scale factor of 1, so a
//! PNG pixel is a CSS pixel.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`deploy/local/services.sh` installs them);
//! `PAYSYNC_CHROMEDRIVER` and `PAYSYNC_CHROMIUM` override the binaries' paths.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::{closed_port, poll_until, unique_id};

/// How long chromedriver may take to listen, and Chromium to open a session.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a resized window may take to report its new viewport.
const RESIZE_DEADLINE: Duration = Duration::from_secs(5);

/// The tallest full-page screenshot, in CSS pixels: a longer page is cut at this height (a
/// window this tall is still cheap to paint; an unbounded one is not).
pub const MAX_SCREENSHOT_HEIGHT: u32 = 6000;

/// The window the browser opens with, in CSS pixels (width, height).
const INITIAL_WINDOW: (u32, u32) = (1280, 900);

/// The chromedriver binary: `PAYSYNC_CHROMEDRIVER`, else Debian's `/usr/bin/chromedriver`.
pub fn chromedriver_path() -> PathBuf {
    std::env::var_os("PAYSYNC_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from)
}

/// The Chromium binary: `PAYSYNC_CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("PAYSYNC_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// One headless Chromium with its own chromedriver, profile and temporary directory.
pub struct Browser {
    client: Client,
    driver: Child,
    /// Holds the profile (`profile/`), Chromium's `TMPDIR` (`tmp/`) and chromedriver's log.
    dir: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port, waits until it accepts connections and opens a
    /// headless Chromium session on it (0.3 s on an idle machine).
    ///
    /// Fails with a message naming the binary when chromedriver or Chromium is missing.
    pub async fn start() -> anyhow::Result<Browser> {
        let driver_bin = chromedriver_path();
        let chromium_bin = chromium_path();
        for bin in [&driver_bin, &chromium_bin] {
            ensure!(
                bin.exists(),
                "{} not found (run deploy/local/services.sh, which installs Debian's chromium \
                 and chromium-driver, or set PAYSYNC_CHROMEDRIVER / PAYSYNC_CHROMIUM)",
                bin.display()
            );
        }

        let dir = std::env::temp_dir().join(format!("paysync-browser-{}", unique_id()));
        let profile = dir.join("profile");
        let tmp = dir.join("tmp");
        for d in [&profile, &tmp] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let log_path = dir.join("chromedriver.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

        let port = closed_port();
        let spawned = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            // Chromium inherits it: its scratch files land in `dir`, removed on drop, even if it
            // is killed before it cleans up after itself.
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            // Its own process group, which Chromium and its helpers join: one signal ends them
            // all (killing chromedriver alone leaves Chromium running).
            .process_group(0)
            .spawn();
        let driver = match spawned {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(anyhow!(err).context(format!(
                    "starting {} (run deploy/local/services.sh, or set PAYSYNC_CHROMEDRIVER)",
                    driver_bin.display()
                )));
            }
        };
        // From here on, `Guard` kills and cleans up if anything fails.
        let mut guard = Guard {
            driver: Some(driver),
            dir: dir.clone(),
        };

        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listening = poll_until(START_DEADLINE, "chromedriver to listen", || {
            let exited = guard
                .driver
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let ready = match exited {
                Some(status) => Some(Err(status)),
                None => TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| Ok(())),
            };
            async move { ready }
        })
        .await;
        match listening {
            Ok(Ok(())) => {}
            Ok(Err(status)) => bail!(
                "{} exited ({status}) before listening on port {port}: {}",
                driver_bin.display(),
                read_log(&log_path)
            ),
            Err(err) => return Err(err.context(read_log(&log_path))),
        }

        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities(&chromium_bin, &profile));
        let client =
            tokio::time::timeout(START_DEADLINE, builder.connect(&format!("http://{addr}")))
                .await
                .map_err(|_| anyhow!("no session from chromedriver within {START_DEADLINE:?}"))
                .and_then(|r| r.map_err(anyhow::Error::from))
                .with_context(|| {
                    format!(
                        "opening a session of {} through chromedriver: {}",
                        chromium_bin.display(),
                        read_log(&log_path)
                    )
                })?;

        let driver = guard
            .driver
            .take()
            .expect("the guard holds the child until here");
        Ok(Browser {
            client,
            driver,
            dir,
        })
    }

    /// The WebDriver client, for navigation, finding elements and running scripts.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Makes the page's layout viewport `width` CSS pixels wide (e.g. 390 for a phone), keeping
    /// the window's height, and checks `window.innerWidth` is then exactly `width`.
    pub async fn set_width(&self, width: u32) -> anyhow::Result<()> {
        let (_, height) = self.client.get_window_size().await?;
        let height = u32::try_from(height).context("window height")?;
        self.client.set_window_size(width, height).await?;
        let (inner, _) = self.viewport().await?;
        if inner != width {
            // A window frame of its own on some platforms: widen the window by the difference.
            let frame = i64::from(width) - i64::from(inner);
            let outer = u32::try_from(i64::from(width) + frame).context("window width")?;
            self.client.set_window_size(outer, height).await?;
        }
        poll_until(RESIZE_DEADLINE, "the viewport width", || async move {
            self.viewport().await.ok().filter(|&(w, _)| w == width)
        })
        .await
        .with_context(|| format!("window.innerWidth did not become {width}"))?;
        Ok(())
    }

    /// Writes a PNG of the whole page (not only the viewport) at the current width to `path`,
    /// creating its parent directory. The window is made as tall as the page (at most
    /// [`MAX_SCREENSHOT_HEIGHT`]) for the shot, then given its height back.
    pub async fn screenshot_full(&self, path: &Path) -> anyhow::Result<()> {
        let (window_w, window_h) = self.client.get_window_size().await?;
        let window_w = u32::try_from(window_w).context("window width")?;
        let window_h = u32::try_from(window_h).context("window height")?;
        let (_, inner_h) = self.viewport().await?;
        // What the window has around the viewport (headless Chromium still reserves room for
        // its toolbars).
        let frame = window_h.saturating_sub(inner_h);
        let page_h = self.page_height().await?.clamp(1, MAX_SCREENSHOT_HEIGHT);

        self.client
            .set_window_size(window_w, page_h + frame)
            .await?;
        let shot = async {
            poll_until(RESIZE_DEADLINE, "the viewport to fit the page", || async {
                self.viewport().await.ok().filter(|&(_, h)| h == page_h)
            })
            .await?;
            Ok::<_, anyhow::Error>(self.client.screenshot().await?)
        }
        .await;
        let restored = self.client.set_window_size(window_w, window_h).await;
        let png = shot?;
        restored.context("giving the window its height back")?;

        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The page's full height in CSS pixels (`scrollHeight` of the document or the body,
    /// whichever is larger).
    pub async fn page_height(&self) -> anyhow::Result<u32> {
        let height = self
            .client
            .execute(
                "return Math.max(document.documentElement.scrollHeight, \
                 document.body ? document.body.scrollHeight : 0);",
                vec![],
            )
            .await?;
        as_u32(&height).context("the page's scrollHeight")
    }

    /// The viewport (`window.innerWidth`, `window.innerHeight`) in CSS pixels.
    pub async fn viewport(&self) -> anyhow::Result<(u32, u32)> {
        let size = self
            .client
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await?;
        let w = as_u32(&size[0]).context("window.innerWidth")?;
        let h = as_u32(&size[1]).context("window.innerHeight")?;
        Ok((w, h))
    }

    /// Ends the session (Chromium quits), then stops chromedriver and removes the profile.
    /// Dropping the `Browser` does the same without the polite part.
    pub async fn close(self) {
        if let Err(err) = self.client.clone().close().await {
            eprintln!("testkit: closing the browser session: {err}");
        }
        // `Drop` kills what is left (helpers still exiting) and removes the directory.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
        remove_dir(&self.dir);
    }
}

/// Kills and cleans up a half-started browser when [`Browser::start`] fails.
struct Guard {
    driver: Option<Child>,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            kill_group(&mut driver);
            remove_dir(&self.dir);
        }
    }
}

/// The capabilities for Debian's Chromium, headless, with its profile in `profile`.
fn capabilities(chromium: &Path, profile: &Path) -> serde_json::Map<String, Value> {
    let (w, h) = INITIAL_WINDOW;
    let options = json!({
        "binary": chromium,
        "args": [
            "--headless=new",
            // Tests run as root in containers, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            // A container's /dev/shm is often too small for Chromium.
            "--disable-dev-shm-usage",
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={w},{h}"),
            // Scrollbars would take width from the layout viewport and show in screenshots.
            "--hide-scrollbars",
            // One PNG pixel per CSS pixel, whatever the machine's display.
            "--force-device-scale-factor=1",
        ],
    });
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    caps
}

/// A script's answer as a whole number of CSS pixels.
fn as_u32(value: &Value) -> anyhow::Result<u32> {
    let n = value
        .as_f64()
        .ok_or_else(|| anyhow!("not a number: {value}"))?;
    ensure!(
        n >= 0.0 && n <= f64::from(u32::MAX) && n.fract() == 0.0,
        "not a whole number of pixels: {n}"
    );
    Ok(n as u32)
}

/// Chromedriver's log, for an error message.
fn read_log(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(log) if !log.trim().is_empty() => format!("chromedriver log:\n{}", log.trim()),
        _ => "chromedriver logged nothing".into(),
    }
}

/// Kills chromedriver's whole process group (chromedriver, Chromium and its helpers), then
/// reaps chromedriver.
fn kill_group(driver: &mut Child) {
    // std offers no way to signal a group without `unsafe`; `kill` does. The group's id is
    // chromedriver's pid, which cannot be reused while a member of the group is alive.
    let group = format!("-{}", driver.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // In case `kill` itself could not run.
    let _ = driver.kill();
    let _ = driver.wait();
}

/// Removes the browser's directory, reporting (not raising) a failure.
fn remove_dir(dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("testkit: removing {}: {err}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Whether any process is left in the process group `group`.
    fn group_alive(group: u32) -> bool {
        Command::new("kill")
            .args(["-0", "--", &format!("-{group}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    #[tokio::test]
    async fn dropping_a_browser_kills_chromium_and_removes_its_directory() {
        let browser = Browser::start().await.unwrap();
        browser.client().goto("about:blank").await.unwrap();
        let group = browser.driver.id();
        let dir = browser.dir.clone();
        assert!(group_alive(group) && dir.join("profile").is_dir());

        // As when a test panics: no `close`.
        drop(browser);

        poll_until(
            Duration::from_secs(10),
            "the process group to end",
            || async { (!group_alive(group)).then_some(()) },
        )
        .await
        .unwrap();
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}
