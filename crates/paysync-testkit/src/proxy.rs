//! A TCP proxy between paysync and a real server (RabbitMQ, PostgreSQL) that can cut, stall or
//! slow its connections on command, so a test can simulate an outage of the shared services
//! without stopping them (the chaosproxy pattern).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Close every open connection and refuse new ones.
    Cut,
    /// Keep connections open but forward nothing (a hung peer).
    Stall,
    /// Forward, each chunk delayed by this much.
    Slow(Duration),
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, watcher) = watch::channel(Fault::Pass);
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let upstream = upstream.to_owned();
        let accept = {
            let links = links.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *watcher.borrow() == Fault::Cut {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let watcher = watcher.clone();
                    let task = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let up = tokio::spawn(pump(cr, sw, watcher.clone()));
                        let down = tokio::spawn(pump(sr, cw, watcher));
                        let _ = tokio::join!(up, down);
                    });
                    let mut links = links.lock().unwrap_or_else(|p| p.into_inner());
                    links.retain(|l| !l.is_finished());
                    links.push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Ok(Self {
            addr,
            fault,
            links,
            accept,
        })
    }

    /// The proxy's port (point the app's URL here).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Applies `fault` from now on; `Cut` also closes every open connection.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
        if fault == Fault::Cut {
            self.abort_links();
        }
    }
}

impl FaultProxy {
    /// Closes every open connection (both directions).
    fn abort_links(&self) {
        for link in self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            link.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.abort_links();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            let now = *fault.borrow();
            match now {
                Fault::Pass => break,
                Fault::Slow(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Stall => {
                    if fault.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Cut => return,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
