//! Live progress while running, the final table, and the JSON for machines.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::drive::Progress;
use crate::node_usage::NodeUsage;
use crate::probe::Latency;
use crate::subscribers::SubscribersReport;
use crate::verify::VerifyReport;

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub seed: u64,
    pub via: String,
    pub events_sent: u64,
    pub errors: u64,
    pub secs: f64,
    pub events_per_sec: f64,
    /// Events per second, one entry per second of the run.
    pub per_second: Vec<u64>,
    /// The probes' event-to-visible latency: created until a query on the owner showed it.
    pub latency: Latency,
    /// The probes' acknowledgement latency: created until the send returned Ok (the HTTP
    /// ingest's answer, or the commit of the Kafka transaction).
    pub ack_latency: Latency,
    pub verify: Option<VerifyReport>,
    /// WebSocket subscribers held during the run (`--subscribers`).
    pub subscribers: Option<SubscribersReport>,
    /// The node process's CPU and memory (`--node-pid`).
    pub node: Option<NodeUsage>,
    pub interrupted: bool,
}

/// Prints a progress line every second to stderr until `progress.stop`; returns the
/// events sent in each second.
pub async fn progress_loop(progress: Arc<Progress>, total: u64) -> Vec<u64> {
    let started = Instant::now();
    let mut last = 0;
    let mut per_second = Vec::new();
    while !progress.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = progress.sent.load(Ordering::Relaxed);
        per_second.push(sent - last);
        last = sent;
        let pct = if total > 0 {
            sent as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        eprintln!(
            "[{:>5.0}s] sent {sent} / {total} ({pct:.1}%)  {}/s  errors {}",
            started.elapsed().as_secs_f64(),
            per_second.last().copied().unwrap_or(0),
            progress.errors.load(Ordering::Relaxed)
        );
    }
    per_second
}

/// The human-readable table.
pub fn table(r: &RunReport) -> String {
    let mut t = String::new();
    let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<28} {v}\n"));
    row(
        "scenario",
        format!("{} (seed {}, via {})", r.scenario, r.seed, r.via),
    );
    row("events sent (acknowledged)", r.events_sent.to_string());
    row("errors", r.errors.to_string());
    row("duration", format!("{:.1} s", r.secs));
    row("throughput", format!("{:.0} events/s", r.events_per_sec));
    row(
        "latency p50 / p99 / p99.9",
        format!(
            "{:.1} / {:.1} / {:.1} ms ({} samples)",
            r.latency.p50_ms, r.latency.p99_ms, r.latency.p999_ms, r.latency.samples
        ),
    );
    row(
        "latency max / timeouts",
        format!("{:.1} ms / {}", r.latency.max_ms, r.latency.timeouts),
    );
    row(
        "acknowledged p50 / p99 / max",
        format!(
            "{:.1} / {:.1} / {:.1} ms ({} samples, {} failed)",
            r.ack_latency.p50_ms,
            r.ack_latency.p99_ms,
            r.ack_latency.max_ms,
            r.ack_latency.samples,
            r.ack_latency.timeouts
        ),
    );
    if let Some(v) = &r.verify {
        row(
            "verification",
            if v.mismatches.is_empty() {
                format!(
                    "exact: {} players, {} channels ({:.1} s)",
                    v.players_checked, v.channels_checked, v.waited_secs
                )
            } else {
                format!("{} MISMATCHES", v.mismatches.len())
            },
        );
    }
    if let Some(s) = &r.subscribers {
        row(
            "subscribers",
            format!(
                "{} ({} players, {} channels, {} top-N), all subscribed in {:.1} s",
                s.clients, s.players, s.channels, s.top, s.connect_secs
            ),
        );
        row(
            "push latency p50/p90/p99/max",
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1} ms ({} samples)",
                s.latency.p50_ms,
                s.latency.p90_ms,
                s.latency.p99_ms,
                s.latency.max_ms,
                s.latency.samples
            ),
        );
        if let Some(p) = &s.probe_latency {
            row(
                "probe events pushed",
                format!(
                    "p50/p90/p99/max {:.1} / {:.1} / {:.1} / {:.1} ms ({} samples)",
                    p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms, p.samples
                ),
            );
        }
        row(
            "frames",
            format!(
                "{} ({} snapshots, {} updates, {} gaps)",
                s.frames, s.snapshots, s.updates, s.gaps
            ),
        );
        row(
            "socket trouble",
            format!(
                "{} error frames, {} unreadable, {} connect failures, {} reconnects, {} slow-client closes, {} gave up",
                s.error_frames, s.protocol_errors, s.connect_failures, s.reconnects, s.slow_closes, s.gave_up
            ),
        );
        row(
            "last frames",
            if s.mismatches.is_empty() {
                format!("exact: {} subscriptions", s.checked)
            } else {
                format!(
                    "{} MISMATCHES of {} subscriptions",
                    s.mismatches.len(),
                    s.checked
                )
            },
        );
    }
    if let Some(n) = &r.node {
        row(
            "node CPU for the load",
            format!(
                "{:.2} µs per event ({:.2} cores over {:.1} s)",
                n.cpu_us_per_event, n.load_cpu_cores, n.load_wall_secs
            ),
        );
        if let Some(b) = n.bytes_per_idle_subscriber {
            row(
                "node memory per subscriber",
                format!(
                    "{:.0} bytes idle (RSS {} -> {} KiB)",
                    b,
                    n.rss_kib_before_subscribers.unwrap_or(0),
                    n.rss_kib_idle_subscribers.unwrap_or(0)
                ),
            );
        }
    }
    if r.interrupted {
        row("note", "interrupted by Ctrl-C: partial results".into());
    }
    t
}
