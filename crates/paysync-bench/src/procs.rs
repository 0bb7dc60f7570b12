//! Child processes: the `paysync` processes under test, the minimal receiver and the load
//! generator. Every child is killed when its handle drops (`kill_on_drop`), so an orchestrator
//! that stops early leaves nothing running; a normal stop is a SIGTERM and a wait.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::loadgen::{LoadReport, LoadgenArgs};

/// A running child process with its logs under the bench's log directory.
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    stderr_log: PathBuf,
}

/// `Command` for `program` with a clean paysync environment: no inherited `PAYSYNC_*` or
/// `RUST_LOG` (the bench sets what it means), standard input closed, killed on drop.
fn command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("PAYSYNC_") || text == "RUST_LOG" {
            command.env_remove(&name);
        }
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    command
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
}

impl Proc {
    /// Starts `program args` with `env`; standard output and error go to
    /// `<logs>/<name>.stdout.log` and `.stderr.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let stdout_log = logs.join(format!("{name}.stdout.log"));
        let stderr_log = logs.join(format!("{name}.stderr.log"));
        let child = command(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log_file(&stdout_log)?)
            .stderr(log_file(&stderr_log)?)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = child.id().context("a just-started child has a pid")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            stderr_log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Peak resident set size (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmHWM")
    }

    /// Current resident set size (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmRSS")
    }

    /// Fails (with the end of its log) if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.name,
                self.stderr_log.display(),
                log_tail(&self.stderr_log, 15)
            );
        }
        Ok(())
    }

    /// Polls `GET http://<addr><path>` until it answers 200, failing after `deadline` or if the
    /// process exits.
    pub async fn wait_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
        deadline: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            self.ensure_running()?;
            if let Ok(200) = crate::http::get_status(addr, path, Duration::from_secs(1)).await {
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                anyhow::bail!(
                    "{} not ready at http://{addr}{path} after {deadline:?}; end of {}:\n{}",
                    self.name,
                    self.stderr_log.display(),
                    log_tail(&self.stderr_log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the process with SIGTERM and waits up to `grace` for it to exit, then kills it.
    /// Fails if it did not exit by itself.
    pub async fn terminate(mut self, grace: Duration) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("running kill -TERM")?;
        anyhow::ensure!(sent.success(), "kill -TERM {} failed", self.pid);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                anyhow::bail!(
                    "{} did not stop within {grace:?} of SIGTERM; killed",
                    self.name
                )
            }
        }
    }
}

/// A field of `/proc/<pid>/status` in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .with_context(|| format!("no {field} in {path}"))
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free TCP port on loopback (bound, then released), never one this process handed out
/// before.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    // A port is free again once its probe listener is dropped, so the OS may hand it out twice;
    // the processes of one row need distinct ones (a receiver refuses its metrics on its public
    // port, and two listeners cannot share one).
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..64 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
        let addr = listener.local_addr().context("reading a bound address")?;
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return Ok(addr);
        }
    }
    anyhow::bail!("no local port that this bench has not handed out already")
}

/// Runs the load generator as a child process (`<exe> loadgen …`) and parses its report. Its
/// standard error goes to `<logs>/<name>.stderr.log`.
pub async fn loadgen(
    exe: &Path,
    logs: &Path,
    name: &str,
    args: &LoadgenArgs,
) -> anyhow::Result<LoadReport> {
    let mut argv = vec![
        "loadgen".to_owned(),
        "--url".to_owned(),
        args.url.clone(),
        "--secret".to_owned(),
        args.secret.clone(),
        "--connections".to_owned(),
        args.connections.to_string(),
        "--tag".to_owned(),
        args.tag.clone(),
        "--customers".to_owned(),
        args.customers.to_string(),
        "--provider".to_owned(),
        args.provider.clone(),
    ];
    let optional = [
        ("--count", args.count.map(|v| v.to_string())),
        ("--rate", args.rate.map(|v| v.to_string())),
        ("--duration-secs", args.duration_secs.map(|v| v.to_string())),
        ("--cert-url", args.cert_url.clone()),
    ];
    for (flag, value) in optional {
        if let Some(value) = value {
            argv.push(flag.to_owned());
            argv.push(value);
        }
    }
    let stderr_log = logs.join(format!("{name}.stderr.log"));
    let output = command(exe)
        .args(&argv)
        .stdout(Stdio::piped())
        .stderr(log_file(&stderr_log)?)
        .spawn()
        .context("starting the load generator")?
        .wait_with_output()
        .await
        .context("waiting for the load generator")?;
    anyhow::ensure!(
        output.status.success(),
        "the load generator failed ({}); end of {}:\n{}",
        output.status,
        stderr_log.display(),
        log_tail(&stderr_log, 15)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("the load generator printed no report")?;
    serde_json::from_str(line).with_context(|| format!("parsing the load report {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addresses_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let addr = free_addr().expect("a free port");
            assert!(seen.insert(addr.port()), "{addr} handed out twice");
        }
    }
}
