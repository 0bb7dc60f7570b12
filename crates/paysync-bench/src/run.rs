//! `paysync-bench run`: the orchestrator.
//!
//! It measures, in this order, each row `runs` times (medians reported, min–max beside them):
//! the broker ceiling, the minimal and the real receiver (paired per run for their ratio), the
//! pgbench ceilings, the worker (paired with the pgbench runs of the same index), end to end,
//! and memory (peak RSS of the receiver and worker rows, then one long run that is not
//! repeated). Everything it creates lives under one unique AMQP prefix and unique schemas, and
//! is removed at the end, also after an error or Ctrl-C (a drop guard covers panics); child
//! processes are killed when their handles drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use paysync_amqp::lapin::Connection;

use crate::broker::{self, CeilingPlan};
use crate::host::{self, CpuTimes, QuietRule};
use crate::pg;
use crate::report::{self, Header};

/// Arguments of `paysync-bench run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Small counts, short durations and one run of each row: about two minutes, to see
    /// that everything works and roughly where it stands. Published figures come from a full run.
    #[arg(long)]
    pub quick: bool,
    /// How often each row is measured (the median is reported). Default: 3, or 1 with
    /// `--quick`.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Where the Markdown table goes.
    #[arg(long, default_value = "target/bench/report.md")]
    pub out: PathBuf,
    /// Measure only these groups of rows (comma-separated), e.g. `--only worker,e2e` while
    /// working on one figure. Ratios to a ceiling that was not measured show `–`. Published
    /// figures come from a run of every row.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Group>,
    /// Events per configuration of the `cluster` group (default 80,000, or 20,000 with
    /// `--quick`): size it so that each configuration takes 20–40 s on the machine.
    #[arg(long)]
    pub cluster_events: Option<u64>,
}

/// The groups of rows `--only` selects.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The broker ceiling.
    Broker,
    /// The minimal receiver, the receiver and its latency (and the receiver's peak RSS).
    Receiver,
    /// The receiver with Square, Authorize.Net and PayPal requests, each against the minimal
    /// receiver.
    Providers,
    /// The pgbench ceilings.
    Pgbench,
    /// The worker (and its peak RSS).
    Worker,
    /// End to end and its lag.
    E2e,
    /// The long memory run.
    Memory,
    /// The outbox: the dispatcher's drain rate, and end to end with the dispatcher running.
    Outbox,
    /// Reconciliation: `paysync reconcile stripe` against a fake event list.
    Reconcile,
    /// The operator console's pages on 100,000 events, 10,000 dead letters and 10,000
    /// accounts.
    Console,
    /// Scale-out on the three-node cluster of `deploy/local/cluster.sh`: 2 receivers and 1, 2
    /// and 4 workers. Measured only when `--only` names it (it needs the cluster).
    Cluster,
}

/// Counts and durations of one benchmark.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Broker ceiling.
    pub ceiling: CeilingPlan,
    /// Requests per full-speed run of the receivers.
    pub http_count: u64,
    /// Load generator connections.
    pub connections: usize,
    /// The fixed moderate rate of the latency rows, requests per second.
    pub rate: f64,
    /// How long the fixed-rate runs last.
    pub rate_secs: f64,
    /// pgbench `-T`.
    pub pgbench_secs: u64,
    /// Events per transaction of the batched pgbench script.
    pub batch: u64,
    /// Deliveries pre-filled for the worker row.
    pub worker_messages: u64,
    /// Events of the sustained end-to-end run.
    pub e2e_count: u64,
    /// Deliveries of the outbox drain row's backlog.
    pub outbox_backlog: u64,
    /// Events the reconcile row lists (half of them missing from the log).
    pub reconcile_events: u64,
    /// Events posted to each configuration of the cluster group.
    pub cluster_events: u64,
    /// Rate of the long memory run.
    pub soak_rate: f64,
    /// Length of the long memory run.
    pub soak_secs: u64,
    /// When the long run's first RSS figure is taken.
    pub soak_early_secs: u64,
    /// How often the long run samples RSS.
    pub sample_every: Duration,
}

impl Plan {
    /// The plan for `--quick` or a full run.
    pub fn new(quick: bool) -> Self {
        Self {
            ceiling: CeilingPlan {
                messages: if quick { 20_000 } else { 200_000 },
                size: 2048,
                channels: 2,
                window: 1024,
            },
            http_count: if quick { 20_000 } else { 100_000 },
            connections: 64,
            rate: 2000.0,
            rate_secs: if quick { 5.0 } else { 30.0 },
            pgbench_secs: if quick { 5 } else { 15 },
            batch: 50,
            worker_messages: if quick { 20_000 } else { 100_000 },
            e2e_count: if quick { 20_000 } else { 60_000 },
            outbox_backlog: if quick { 2_000 } else { 10_000 },
            reconcile_events: if quick { 4_000 } else { 20_000 },
            cluster_events: if quick { 20_000 } else { 80_000 },
            soak_rate: 500.0,
            soak_secs: if quick { 45 } else { 600 },
            soak_early_secs: if quick { 15 } else { 60 },
            sample_every: Duration::from_secs(5),
        }
    }
}

/// How often the cleanup tries to delete what is left on the broker.
const CLEANUP_ATTEMPTS: u32 = 3;

/// The pause between two cleanup attempts, for a broker component to restart.
const CLEANUP_PAUSE: Duration = Duration::from_secs(2);

/// What must be removed at the end: queues, exchanges and schemas the bench created.
pub struct Cleanup {
    amqp_url: String,
    db_url: String,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
    schemas: Mutex<Vec<String>>,
    /// The cluster the `cluster` group declared `cluster_objects` on (its URL list).
    cluster_url: Mutex<Option<String>>,
    cluster_objects: Mutex<Vec<broker::Object>>,
    done: AtomicBool,
}

impl Cleanup {
    fn new(amqp_url: &str, db_url: &str) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            db_url: db_url.to_owned(),
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
            schemas: Mutex::new(Vec::new()),
            cluster_url: Mutex::new(None),
            cluster_objects: Mutex::new(Vec::new()),
            done: AtomicBool::new(false),
        }
    }

    fn push(list: &Mutex<Vec<String>>, item: String) {
        let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
        if !list.contains(&item) {
            list.push(item);
        }
    }

    /// Removes paysync's whole topology under `prefix` at the end.
    pub fn topology(&self, prefix: &str) {
        let (queues, exchanges) = broker::topology_objects(prefix);
        for q in queues {
            Self::push(&self.queues, q);
        }
        for e in exchanges {
            Self::push(&self.exchanges, e);
        }
    }

    /// Removes paysync's whole topology under `prefix` on the cluster at `url` (comma-separated
    /// node URLs) at the end, or at [`Cleanup::run_cluster`].
    pub fn cluster_topology(&self, url: &str, prefix: &str) {
        *self.cluster_url.lock().unwrap_or_else(|p| p.into_inner()) = Some(url.to_owned());
        let (queues, exchanges) = broker::topology_objects(prefix);
        let mut objects = self
            .cluster_objects
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for object in queues
            .into_iter()
            .map(broker::Object::Queue)
            .chain(exchanges.into_iter().map(broker::Object::Exchange))
        {
            if !objects.contains(&object) {
                objects.push(object);
            }
        }
    }

    /// Deletes what was registered on the cluster so far (call it once the processes that
    /// used it are stopped); returns what could not be deleted.
    pub async fn run_cluster(&self) -> Vec<String> {
        let objects = std::mem::take(
            &mut *self
                .cluster_objects
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let url = self
            .cluster_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match url {
            Some(url) if !objects.is_empty() => self.delete_objects(&url, objects).await,
            _ => Vec::new(),
        }
    }

    /// Removes `queue` at the end.
    pub fn queue(&self, queue: &str) {
        Self::push(&self.queues, queue.to_owned());
    }

    /// Drops `schema` at the end.
    pub fn schema(&self, schema: &str) {
        Self::push(&self.schemas, schema.to_owned());
    }

    fn take(list: &Mutex<Vec<String>>) -> Vec<String> {
        std::mem::take(&mut *list.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Deletes `objects`, each on a channel of its own. A deletion can fail with a broker error
    /// that closes the whole connection (RabbitMQ 3.10's segment writer can crash when a
    /// quorum queue is deleted right after a purge; it restarts): what is left is tried again
    /// on a new connection, up to [`CLEANUP_ATTEMPTS`] times. Returns the last failures.
    async fn delete_objects(&self, url: &str, mut left: Vec<broker::Object>) -> Vec<String> {
        let mut failures = Vec::new();
        for attempt in 0..CLEANUP_ATTEMPTS {
            if left.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(CLEANUP_PAUSE).await;
            }
            failures.clear();
            let connection = match broker::connect_any(url, "paysync-bench-cleanup").await {
                Ok(connection) => connection,
                Err(err) => {
                    failures.push(format!("broker: {err:#}"));
                    continue;
                }
            };
            let mut still = Vec::new();
            for object in left {
                if !connection.status().connected() {
                    still.push(object);
                    continue;
                }
                if let Err(err) = object.delete(&connection).await {
                    failures.push(format!("{object}: {err:#}"));
                    still.push(object);
                }
            }
            left = still;
            let _ = connection.close(200, "cleaned up".into()).await;
        }
        if !left.is_empty() && failures.is_empty() {
            failures.extend(left.iter().map(|o| format!("{o}: not deleted")));
        }
        failures
    }

    /// Deletes everything registered; returns what could not be deleted.
    pub async fn run(&self) -> Vec<String> {
        self.done.store(true, Ordering::SeqCst);
        let queues = Self::take(&self.queues);
        let exchanges = Self::take(&self.exchanges);
        let schemas = Self::take(&self.schemas);
        let mut failures = Vec::new();
        let objects = queues
            .into_iter()
            .map(broker::Object::Queue)
            .chain(exchanges.into_iter().map(broker::Object::Exchange))
            .collect();
        failures.extend(self.delete_objects(&self.amqp_url, objects).await);
        failures.extend(self.run_cluster().await);
        for schema in schemas {
            if let Err(err) = pg::drop_schema(&self.db_url, &schema).await {
                failures.push(format!("{err:#}"));
            }
        }
        failures
    }
}

/// Runs the cleanup on drop if it has not run (a panic, or an early return before it).
struct CleanupGuard(Arc<Cleanup>);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if self.0.done.load(Ordering::SeqCst) {
            return;
        }
        let cleanup = self.0.clone();
        // Drop cannot be async: clean up on a helper thread with its own runtime.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            anyhow::Ok(runtime.block_on(cleanup.run()))
        });
        match handle.join() {
            Ok(Ok(failures)) => {
                for failure in failures {
                    eprintln!("paysync-bench: cleanup: {failure}");
                }
            }
            Ok(Err(err)) => eprintln!("paysync-bench: cleanup: {err:#}"),
            Err(_) => eprintln!("paysync-bench: cleanup panicked"),
        }
    }
}

/// Everything the rows share.
pub struct Bench {
    /// Counts and durations.
    pub plan: Plan,
    /// Repetitions of each row.
    pub runs: usize,
    /// 12 hex digits unique to this bench run.
    pub id: String,
    /// The AMQP prefix of this bench run (`bench-<id>`); rows add a suffix.
    pub prefix: String,
    /// The schema prefix of this bench run (`bench_<id>`); rows add a suffix.
    pub schema_base: String,
    /// The Stripe signing secret of this bench run.
    pub secret: String,
    /// This binary (for the mini receiver and the load generator).
    pub exe: PathBuf,
    /// The `paysync` binary next to it.
    pub paysync: PathBuf,
    /// `target/bench`.
    pub dir: PathBuf,
    /// `target/bench/logs`.
    pub logs: PathBuf,
    /// The broker.
    pub amqp_url: String,
    /// The database, as `paysync` gets it.
    pub db_url: String,
    /// The orchestrator's own broker connection (counts, purges).
    pub amqp: Connection,
    /// What to remove at the end.
    pub cleanup: Arc<Cleanup>,
    /// The groups of rows to measure (all when `--only` is not given).
    only: Vec<Group>,
    /// What was done between loads.
    rest: Mutex<Rest>,
}

/// What [`Bench::quiesce`] did over the run.
#[derive(Debug, Default)]
struct Rest {
    loads: u32,
    /// Why the WAL could not be rolled over (then it is not tried again).
    wal_error: Option<String>,
    longest_wait: Duration,
    timeouts: u32,
}

impl Bench {
    /// Whether `group`'s rows are measured in this run.
    pub fn measures(&self, group: Group) -> bool {
        // The cluster group needs the three-node cluster: only when asked for by name.
        (self.only.is_empty() && group != Group::Cluster) || self.only.contains(&group)
    }

    async fn setup(args: &RunArgs) -> anyhow::Result<Self> {
        let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
        anyhow::ensure!(runs >= 1, "--runs must be at least 1");
        let exe = std::env::current_exe().context("locating paysync-bench")?;
        let paysync = exe
            .parent()
            .context("paysync-bench has no parent directory")?
            .join("paysync");
        anyhow::ensure!(
            paysync.is_file(),
            "{} not found: build it next to paysync-bench (cargo build --release --bin paysync --bin paysync-bench)",
            paysync.display()
        );
        let dir = PathBuf::from("target/bench");
        let logs = dir.join("logs");
        if logs.is_dir() {
            std::fs::remove_dir_all(&logs)
                .with_context(|| format!("clearing {}", logs.display()))?;
        }
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let amqp_url = broker::DEFAULT_URL.to_owned();
        let db_url = pg::DEFAULT_URL.to_owned();
        let amqp = broker::connect(&amqp_url, &format!("paysync-bench-{id}")).await?;
        let cleanup = Arc::new(Cleanup::new(&amqp_url, &db_url));
        let mut plan = Plan::new(args.quick);
        if let Some(n) = args.cluster_events {
            anyhow::ensure!(n >= 1, "--cluster-events must be at least 1");
            plan.cluster_events = n;
        }
        Ok(Self {
            plan,
            runs,
            prefix: format!("bench-{id}"),
            schema_base: format!("bench_{id}"),
            secret: format!("whsec_bench_{id}"),
            id,
            exe,
            paysync,
            dir,
            logs,
            amqp_url,
            db_url,
            amqp,
            cleanup,
            only: args.only.clone(),
            rest: Mutex::new(Rest::default()),
        })
    }

    /// A tag for event ids, unique to this bench run, `row` and `run`.
    pub fn tag(&self, row: &str, run: usize) -> String {
        format!("{row}{run}{}", self.id)
    }

    /// A sub-prefix of this bench run, registered for cleanup.
    pub fn prefix_for(&self, row: &str) -> String {
        let prefix = format!("{}-{row}", self.prefix);
        self.cleanup.topology(&prefix);
        prefix
    }

    /// A fresh schema migrated with `paysync migrate`, registered for cleanup.
    pub async fn schema_for(&self, row: &str) -> anyhow::Result<String> {
        let schema = format!("{}_{row}", self.schema_base);
        self.cleanup.schema(&schema);
        pg::migrate(&self.paysync, &self.db_url, &schema, &self.logs).await?;
        Ok(schema)
    }

    /// The environment every `paysync` process gets.
    pub fn paysync_env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            ("PAYSYNC_AMQP_URL".into(), self.amqp_url.clone()),
            ("PAYSYNC_AMQP_PREFIX".into(), prefix.to_owned()),
            ("RUST_LOG".into(), "info".into()),
        ]
    }

    /// Prints a progress line on standard error.
    pub fn progress(&self, line: impl AsRef<str>) {
        eprintln!("paysync-bench: {}", line.as_ref());
    }

    /// Brings the broker and the machine to rest before the load `what`: rolls the broker's
    /// WAL over (see [`broker::roll_over_wal`]; given up for the whole run after its first
    /// failure), then waits for a quiet machine (see [`host::wait_quiet`]). Says so when the
    /// wait took a while or ran out.
    pub async fn quiesce(&self, what: &str) {
        let roll = self.lock_rest().wal_error.is_none();
        let wal_failure = if roll {
            broker::roll_over_wal()
                .await
                .err()
                .map(|e| format!("{e:#}"))
        } else {
            None
        };
        let quiet = host::wait_quiet(QuietRule::BETWEEN_LOADS).await;
        {
            let mut rest = self.lock_rest();
            rest.loads += 1;
            if let Some(e) = wal_failure {
                self.progress(format!(
                    "the broker's WAL cannot be rolled over before each load ({e}); loads may include a rollover"
                ));
                rest.wal_error = Some(e);
            }
            rest.longest_wait = rest.longest_wait.max(quiet.waited);
            rest.timeouts += u32::from(quiet.timed_out);
        }
        let busy = quiet
            .last_busy
            .map_or_else(|| "unknown".to_owned(), |b| format!("{:.0} %", b * 100.0));
        if quiet.timed_out {
            self.progress(format!(
                "{what}: the machine was still busy ({busy} of all cores) after {:.0} s; measuring anyway",
                quiet.waited.as_secs_f64()
            ));
        } else if quiet.waited >= Duration::from_secs(3) {
            self.progress(format!(
                "{what}: waited {:.1} s for a quiet machine",
                quiet.waited.as_secs_f64()
            ));
        }
    }

    fn lock_rest(&self) -> std::sync::MutexGuard<'_, Rest> {
        self.rest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What [`Bench::quiesce`] did over the run, for the header.
    fn rest_summary(&self) -> Option<String> {
        let rest = self.lock_rest();
        if rest.loads == 0 {
            return None;
        }
        let wal = match &rest.wal_error {
            None => "broker WAL rolled over".to_owned(),
            Some(e) => format!("broker WAL not rolled over ({e})"),
        };
        let rule = QuietRule::BETWEEN_LOADS;
        let timeouts = match rest.timeouts {
            0 => String::new(),
            n => format!(", {n} still busy after {} s", rule.deadline.as_secs()),
        };
        Some(format!(
            "before each of {} loads: {wal}, then the machine under {:.0} % busy for {:.0} s (longest wait {:.1} s{timeouts})",
            rest.loads,
            rule.max_busy * 100.0,
            (rule.window * rule.windows).as_secs_f64(),
            rest.longest_wait.as_secs_f64()
        ))
    }

    /// The scripts directory for pgbench.
    pub fn pgbench_dir(&self) -> PathBuf {
        self.dir.join("pgbench")
    }

    /// The log directory.
    pub fn logs(&self) -> &Path {
        &self.logs
    }
}

/// `paysync-bench run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
        ))
        .context("formatting the date")?;
    let bench = Bench::setup(&args).await?;
    let guard = CleanupGuard(bench.cleanup.clone());
    let mut header = Header {
        date,
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory: total_memory(),
        rabbitmq: broker::version().await,
        postgres: pg::version(&bench.db_url).await?,
        command: command_line(),
        mode: format!(
            "{}, {} run(s) per row, medians",
            if args.quick { "quick" } else { "full" },
            bench.runs
        ),
        wall: None,
        cpu: None,
        between_loads: None,
    };
    let cpu_start = CpuTimes::now();
    bench.progress(format!(
        "prefix {}, schemas {}_*, logs in {}",
        bench.prefix,
        bench.schema_base,
        bench.logs.display()
    ));
    let outcome = tokio::select! {
        rows = crate::rows::all(&bench) => Ok(rows),
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if outcome.is_ok() {
        // Deleting a quorum queue while the broker still truncates its log after a purge
        // is what crashes RabbitMQ 3.10's segment writer (see `Cleanup::delete_objects`).
        bench.quiesce("cleanup").await;
    }
    let failures = bench.cleanup.run().await;
    drop(guard);
    let _ = bench.amqp.close(200, "done".into()).await;
    for failure in &failures {
        eprintln!("paysync-bench: cleanup: {failure}");
    }
    let rows = outcome?;
    header.between_loads = bench.rest_summary();
    header.wall = Some(format!("{:.0} s", started.elapsed().as_secs_f64()));
    header.cpu = cpu_start
        .zip(CpuTimes::now())
        .and_then(|(start, end)| end.since(&start))
        .map(|share| {
            format!(
                "busy {:.1} %, stolen by the host {:.1} % (all cores, /proc/stat over the run)",
                share.busy * 100.0,
                share.steal * 100.0
            )
        });
    let text = report::text(&header, &rows);
    println!("\n{text}");
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&args.out, report::markdown(&header, &rows))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bench.progress(format!("wrote {}", args.out.display()));
    if rows.iter().any(|r| r.figure == "FAILED") {
        anyhow::bail!(
            "some rows failed (see the table and {})",
            bench.logs.display()
        );
    }
    Ok(())
}

fn total_memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let kib: f64 = l
                    .strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
