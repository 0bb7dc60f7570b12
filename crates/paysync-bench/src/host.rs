//! The machine under the benchmark: its CPU time counters, and a wait for it to go quiet.
//!
//! Every process of a run shares two cores, so a load that starts while the broker is still
//! deleting the previous load's segments, or PostgreSQL is still checkpointing, times that
//! work too. [`wait_quiet`] holds each load until the machine is idle, which makes the order
//! of the loads matter less; [`CpuTimes`] gives the busy and stolen shares the header prints.

use std::time::{Duration, Instant};

/// When the machine counts as quiet: `windows` consecutive windows of `window` each, with
/// less than `max_busy` of all cores busy (steal is the host's, not ours, and is not counted).
#[derive(Debug, Clone, Copy)]
pub struct QuietRule {
    pub max_busy: f64,
    pub window: Duration,
    pub windows: u32,
    /// Give up after this long and measure anyway (the caller says so).
    pub deadline: Duration,
}

impl QuietRule {
    /// The rule between loads: under 10 % busy for one second, at most 60 s of waiting. An
    /// idle machine here shows 0–2 %.
    pub const BETWEEN_LOADS: Self = Self {
        max_busy: 0.10,
        window: Duration::from_millis(250),
        windows: 4,
        deadline: Duration::from_secs(60),
    };
}

/// How a wait for a quiet machine ended.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    pub waited: Duration,
    /// Busy share of the last window (none without `/proc/stat`).
    pub last_busy: Option<f64>,
    /// Whether the deadline passed first.
    pub timed_out: bool,
}

/// Counts consecutive quiet windows; a busy window starts the count again.
#[derive(Debug)]
struct Streak {
    rule: QuietRule,
    quiet: u32,
}

impl Streak {
    fn new(rule: QuietRule) -> Self {
        Self { rule, quiet: 0 }
    }

    /// Records one window's busy share; true once enough quiet windows followed each other.
    fn observe(&mut self, busy: f64) -> bool {
        if busy < self.rule.max_busy {
            self.quiet += 1;
        } else {
            self.quiet = 0;
        }
        self.quiet >= self.rule.windows
    }
}

/// Waits until the machine is quiet by `rule`, or its deadline passes. Returns at once where
/// there is no `/proc/stat`.
pub async fn wait_quiet(rule: QuietRule) -> Quiet {
    let started = Instant::now();
    let mut streak = Streak::new(rule);
    let mut last_busy = None;
    let Some(mut before) = CpuTimes::now() else {
        return Quiet {
            waited: Duration::ZERO,
            last_busy,
            timed_out: false,
        };
    };
    loop {
        tokio::time::sleep(rule.window).await;
        let Some(now) = CpuTimes::now() else { break };
        if let Some(share) = now.since(&before) {
            last_busy = Some(share.busy);
            if streak.observe(share.busy) {
                break;
            }
        }
        before = now;
        if started.elapsed() >= rule.deadline {
            return Quiet {
                waited: started.elapsed(),
                last_busy,
                timed_out: true,
            };
        }
    }
    Quiet {
        waited: started.elapsed(),
        last_busy,
        timed_out: false,
    }
}

/// The machine's CPU time counters, from the `cpu` line of `/proc/stat` (clock ticks, all
/// cores together). A VM's `steal` is the time its CPUs were ready to run but the host ran
/// something else: a benchmark's absolute figures fall with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

/// Shares of the elapsed CPU time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    pub busy: f64,
    pub steal: f64,
}

impl CpuTimes {
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Reads the aggregate `cpu` line: user nice system idle iowait irq softirq steal
    /// (guest time is already counted in user and nice).
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let field = |i: usize| fields.get(i).copied();
        Some(Self {
            busy: field(0)? + field(1)? + field(2)? + field(5)? + field(6)?,
            idle: field(3)? + field(4)?,
            steal: field(7).unwrap_or(0),
        })
    }

    pub fn since(&self, start: &Self) -> Option<CpuShare> {
        let busy = self.busy.checked_sub(start.busy)?;
        let idle = self.idle.checked_sub(start.idle)?;
        let steal = self.steal.checked_sub(start.steal)?;
        let total = busy + idle + steal;
        (total > 0).then(|| CpuShare {
            busy: busy as f64 / total as f64,
            steal: steal as f64 / total as f64,
        })
    }
}

impl CpuTimes {
    /// Busy and all (busy, idle and stolen) clock ticks since `start`, all cores together.
    pub fn ticks_since(&self, start: &Self) -> Option<(u64, u64)> {
        let busy = self.busy.checked_sub(start.busy)?;
        let idle = self.idle.checked_sub(start.idle)?;
        let steal = self.steal.checked_sub(start.steal)?;
        Some((busy, busy + idle + steal))
    }
}

/// CPU time of process `pid` in clock ticks: `utime + stime`, plus, with `children`, the
/// `cutime + cstime` of its children that ended (fields 14–17 of `/proc/<pid>/stat`). None
/// when the process is gone.
pub fn process_ticks(pid: u32, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&stat, children)
}

/// [`process_ticks`] from the text of a `/proc/<pid>/stat` file. The command name, in
/// parentheses, may hold spaces: the fields are counted after its closing parenthesis.
fn stat_ticks(stat: &str, children: bool) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is at index n − 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let own = field(14)? + field(15)?;
    Some(if children {
        own + field(16)? + field(17)?
    } else {
        own
    })
}

/// CPU time of every process named `comm` (`/proc/<pid>/comm`), with the time of their ended
/// children, in clock ticks: e.g. `postgres`, whose postmaster collects the time of the
/// backends that ended.
pub fn ticks_of_command(comm: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim_end() == comm)
        })
        .filter_map(|pid| process_ticks(pid, true))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_are_counted_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime …
        let stat = "42 (tokio rt) S) S 1 42 42 0 -1 4194560 10 0 0 0 300 50 7 3 20 0 9";
        assert_eq!(stat_ticks(stat, false), Some(350));
        assert_eq!(stat_ticks(stat, true), Some(360));
        assert_eq!(stat_ticks("42 (x) S 1", false), None);
        let now = CpuTimes::parse("cpu  400 0 150 900 50 10 10 80 0 0\n").unwrap();
        let start = CpuTimes::parse("cpu  100 0 50 800 50 0 0 0 0 0\n").unwrap();
        assert_eq!(now.ticks_since(&start), Some((420, 600)));
        assert!(process_ticks(std::process::id(), true).is_some());
    }

    #[test]
    fn cpu_shares_come_from_the_aggregate_line() {
        let before = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        let after = "cpu  400 0 150 900 50 10 10 80 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let start = CpuTimes::parse(before).unwrap();
        let end = CpuTimes::parse(after).unwrap();
        assert_eq!(
            start,
            CpuTimes {
                busy: 150,
                idle: 850,
                steal: 0
            }
        );
        // 420 busy, 100 idle, 80 stolen ticks of 600.
        let share = end.since(&start).unwrap();
        assert!((share.busy - 0.7).abs() < 1e-9, "{share:?}");
        assert!((share.steal - 80.0 / 600.0).abs() < 1e-9, "{share:?}");
        // Counters never go back; a reset (or swapped arguments) gives no figure.
        assert_eq!(start.since(&end), None);
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn quiet_needs_consecutive_quiet_windows() {
        let mut streak = Streak::new(QuietRule::BETWEEN_LOADS);
        // Three quiet windows, then a busy one: the count starts again.
        assert!(!streak.observe(0.01));
        assert!(!streak.observe(0.05));
        assert!(!streak.observe(0.09));
        assert!(!streak.observe(0.40));
        assert!(!streak.observe(0.02));
        assert!(!streak.observe(0.02));
        assert!(!streak.observe(0.02));
        assert!(streak.observe(0.02));
        // Exactly at the limit is busy.
        let mut streak = Streak::new(QuietRule {
            windows: 1,
            ..QuietRule::BETWEEN_LOADS
        });
        assert!(!streak.observe(0.10));
        assert!(streak.observe(0.099));
    }

    #[tokio::test]
    async fn waiting_for_quiet_ends_by_the_deadline() {
        // A rule no machine can meet (under 0 % busy) returns at its deadline, saying so.
        let rule = QuietRule {
            max_busy: 0.0,
            window: Duration::from_millis(20),
            windows: 1,
            deadline: Duration::from_millis(100),
        };
        let quiet = wait_quiet(rule).await;
        if CpuTimes::now().is_some() {
            assert!(quiet.timed_out, "{quiet:?}");
            assert!(quiet.waited >= rule.deadline, "{quiet:?}");
            assert!(quiet.last_busy.is_some(), "{quiet:?}");
        } else {
            assert!(!quiet.timed_out, "{quiet:?}");
        }
    }
}
