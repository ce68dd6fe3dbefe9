//! A node process's CPU time and resident memory, read from /proc, for benchmarks that run
//! one node on the same machine as the load tester (`--node-pid`): CPU per event with and
//! without subscribers, memory per idle subscriber. Sampled at the phases of a run the
//! load tester alone knows (subscribers connected, load started, load ended).
//!
//! Not for: clusters, remote nodes or anything but Linux; the node's own metrics are the
//! place for operators.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

/// One reading of the process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU time so far, seconds.
    pub cpu_secs: f64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    pub at: Instant,
}

impl Sample {
    /// Reads /proc/PID/stat and /proc/PID/status.
    pub fn read(pid: u32) -> anyhow::Result<Sample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat (--node-pid {pid})"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status (--node-pid {pid})"))?;
        let ticks = cpu_ticks(&stat).with_context(|| format!("parse /proc/{pid}/stat"))?;
        let rss_kib = rss_kib(&status).with_context(|| format!("parse /proc/{pid}/status"))?;
        Ok(Sample {
            cpu_secs: ticks as f64 / clock_ticks_per_sec(),
            rss_kib,
            at: Instant::now(),
        })
    }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command name (field 2)
/// is in parentheses and may itself hold spaces and parentheses: fields are counted from
/// the last `)`.
pub fn cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no `)` after the command name")?;
    // `rest` starts at field 3 (the state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        let f = fields
            .get(n - 3)
            .with_context(|| format!("field {n} missing"))?;
        f.parse()
            .with_context(|| format!("field {n}: not a number: {f:?}"))
    };
    Ok(field(14)? + field(15)?)
}

/// The `VmRSS:` line of /proc/PID/status, KiB.
pub fn rss_kib(status: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse()
        .with_context(|| format!("VmRSS: not a number of kB: {line:?}"))
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a configuration value; it takes no pointers and has no
    // preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// What a run measured of the node process (`--node-pid`).
#[derive(Debug, Default, Serialize)]
pub struct NodeUsage {
    pub pid: u32,
    /// From the load's first batch until `SETTLE` after its last, CPU seconds of the node.
    pub load_cpu_secs: f64,
    pub load_wall_secs: f64,
    /// Node CPU time per event sent in that window, microseconds.
    pub cpu_us_per_event: f64,
    /// Average cores the node used in that window.
    pub load_cpu_cores: f64,
    pub rss_kib_at_start: u64,
    pub rss_kib_after_load: u64,
    /// With subscribers: the node's RSS just before they connected, and with all of them
    /// connected and idle (after `--subscribers-idle-secs`).
    pub rss_kib_before_subscribers: Option<u64>,
    pub rss_kib_idle_subscribers: Option<u64>,
    /// (idle - before) / subscribers.
    pub bytes_per_idle_subscriber: Option<f64>,
    /// CPU seconds the node spent while the subscribers connected.
    pub connect_cpu_secs: Option<f64>,
    /// Average cores of the node while the subscribers were idle (before the load).
    pub idle_cpu_cores_with_subscribers: Option<f64>,
}

impl NodeUsage {
    /// The load window's figures, from samples at its start and end.
    pub fn load(&mut self, start: &Sample, end: &Sample, events: u64) {
        self.load_cpu_secs = end.cpu_secs - start.cpu_secs;
        self.load_wall_secs = end.at.duration_since(start.at).as_secs_f64();
        self.cpu_us_per_event = self.load_cpu_secs * 1e6 / events.max(1) as f64;
        self.load_cpu_cores = self.load_cpu_secs / self.load_wall_secs.max(1e-9);
        self.rss_kib_after_load = end.rss_kib;
    }

    /// The subscribers' figures: samples before they connected, once all had connected,
    /// and after they had been idle.
    pub fn subscribers(&mut self, before: &Sample, connected: &Sample, idle: &Sample, n: usize) {
        self.rss_kib_before_subscribers = Some(before.rss_kib);
        self.rss_kib_idle_subscribers = Some(idle.rss_kib);
        self.bytes_per_idle_subscriber =
            Some((idle.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / n.max(1) as f64);
        self.connect_cpu_secs = Some(connected.cpu_secs - before.cpu_secs);
        let idle_secs = idle.at.duration_since(connected.at).as_secs_f64();
        self.idle_cpu_cores_with_subscribers =
            (idle_secs > 0.0).then(|| (idle.cpu_secs - connected.cpu_secs) / idle_secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        // A command name with a space and a parenthesis, as /proc prints it.
        let stat = "4242 (tally (node) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 1 2";
        assert_eq!(cpu_ticks(stat).unwrap(), 325);
        assert!(cpu_ticks("4242 tally S 1").is_err());
        assert!(cpu_ticks("4242 (tally) S 1 2").is_err());
    }

    #[test]
    fn rss_is_read_from_the_vmrss_line() {
        let status = "Name:\ttally-node\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n";
        assert_eq!(rss_kib(status).unwrap(), 123_456);
        assert!(rss_kib("Name:\tx\n").is_err());
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = Sample::read(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.cpu_secs >= 0.0);
    }

    #[test]
    fn usage_per_event_and_per_subscriber() {
        let t0 = Instant::now();
        let at = |secs: f64| t0 + std::time::Duration::from_secs_f64(secs);
        let s = |cpu_secs, rss_kib, secs| Sample {
            cpu_secs,
            rss_kib,
            at: at(secs),
        };
        let mut u = NodeUsage::default();
        u.subscribers(
            &s(1.0, 1000, 0.0),
            &s(3.0, 2000, 10.0),
            &s(3.5, 1100 + 1000, 15.0),
            100,
        );
        assert_eq!(u.bytes_per_idle_subscriber, Some(1100.0 * 1024.0 / 100.0));
        assert_eq!(u.connect_cpu_secs, Some(2.0));
        assert_eq!(u.idle_cpu_cores_with_subscribers, Some(0.1));
        u.load(&s(10.0, 0, 20.0), &s(12.0, 5000, 30.0), 200_000);
        assert!((u.cpu_us_per_event - 10.0).abs() < 1e-9);
        assert!((u.load_cpu_cores - 0.2).abs() < 1e-9);
        assert_eq!(u.rss_kib_after_load, 5000);
    }
}
