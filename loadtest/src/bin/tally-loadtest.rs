//! `tally-loadtest`: parses arguments and runs a scenario from the library.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tally_loadtest::drive::{self, DriveOpts, Progress, Via};
use tally_loadtest::node_usage::{NodeUsage, Sample};
use tally_loadtest::players::{self, Expected, PlayersGen, PlayersSpec};
use tally_loadtest::report::{self, RunReport};
use tally_loadtest::subscribers::{self, Mix, Population, Subscribers, SubscribersOpts};
use tally_loadtest::verify::{self, VerifyOpts};
use tally_loadtest::viewers::{self, ViewersGen, ViewersSpec};
use tally_loadtest::{baseline, probe};
use tally_node::config::KafkaConfig;

#[derive(Parser)]
#[command(
    name = "tally-loadtest",
    version,
    about = "Load generator and exact verifier for Tally"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// P players emitting sessions, matches, purchases, chat and follows.
    Players(PlayersArgs),
    /// N concurrent viewers over M channels (Zipf), heartbeating, switching about once a
    /// minute, sometimes leaving.
    Viewers(ViewersArgs),
    /// Plain rdkafka consume-and-discard of a topic: the throughput yardstick.
    Baseline(BaselineArgs),
    /// Measures a node's apply rate from its metrics until it applied N records.
    ConsumeRate(ConsumeRateArgs),
    /// kill -9 a node and measure until its partitions process new events on the survivors.
    Failover(FailoverArgs),
    /// Query latency of players on their owner versus through another node.
    QueryLatency(QueryLatencyArgs),
}

#[derive(Args)]
struct KafkaArgs {
    /// Kafka bootstrap brokers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "player-events")]
    player_topic: String,
    #[arg(long, default_value = "channel-events")]
    channel_topic: String,
}

impl KafkaArgs {
    fn config(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            player_topic: self.player_topic.clone(),
            channel_topic: self.channel_topic.clone(),
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct FailoverArgs {
    /// API address (host:port) of a node that stays up.
    #[arg(long)]
    survivor: String,
    /// Node id of the node to kill.
    #[arg(long)]
    victim: String,
    /// Its process id.
    #[arg(long)]
    pid: u32,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct QueryLatencyArgs {
    /// Any node's API address (host:port).
    #[arg(long)]
    node: String,
    /// Id prefix of a previous players run; players `<prefix>p<n>` are queried.
    #[arg(long)]
    id_prefix: String,
    /// Players of that run.
    #[arg(long)]
    players: u64,
    /// Distinct players to query.
    #[arg(long, default_value_t = 500)]
    sample: u64,
    /// Rounds over the sample.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum ViaArg {
    Kafka,
    Http,
    /// Build and encode every record, then drop it: the generator's own ceiling.
    None,
}

#[derive(Args)]
struct Common {
    /// Seed: the same seed generates the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tally API addresses (host:port, comma-separated) for HTTP ingest, verification and
    /// latency probes.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// API key sent to the nodes (`Authorization: Bearer`), for a cluster with auth on: scope
    /// `ingest` for --via http, `read` for --verify and latency probes.
    #[arg(long, env = "TALLY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Send straight to Kafka (partitioned as Tally expects), through HTTP ingest, or
    /// nowhere (none: measures what the generator alone can produce).
    #[arg(long, value_enum, default_value_t = ViaArg::Kafka)]
    via: ViaArg,
    /// Target events per second, or "max".
    #[arg(long, default_value = "max")]
    rate: String,
    /// After sending, wait until the cluster reports exactly the expected state.
    #[arg(long)]
    verify: bool,
    /// Verify only this many randomly chosen players (all channels are always checked).
    #[arg(long)]
    sample: Option<usize>,
    /// Give up verifying after this many seconds.
    #[arg(long, default_value_t = 300)]
    verify_timeout: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Events per batch (a Kafka transaction or an HTTP request).
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Parallel HTTP requests (each player always in the same lane).
    #[arg(long, default_value_t = 8)]
    lanes: usize,
    /// Prefix of every id; default "lt<seed>-<unix time>-" keeps runs apart.
    #[arg(long)]
    id_prefix: Option<String>,
    /// The cluster's shard.viewer_timeout_secs (expected concurrent viewers depend on it).
    #[arg(long, default_value_t = 120)]
    viewer_timeout_secs: u64,
    /// Milliseconds between latency probes (0 = no probes).
    #[arg(long, default_value_t = 100)]
    probe_interval_ms: u64,
    /// Stamp every event with the time its batch is sent instead of the generated time
    /// (implied by --subscribers; give it to a run without them to send the same load).
    #[arg(long)]
    stamp_send_time: bool,
    /// Process id of the one node, on this machine: its CPU per event and (with
    /// --subscribers) its memory per idle subscriber are measured from /proc.
    #[arg(long)]
    node_pid: Option<u32>,
    #[command(flatten)]
    subscribe: SubscribeArgs,
}

#[derive(Args)]
#[command(next_help_heading = "Subscribers (WebSocket push, while the load runs)")]
struct SubscribeArgs {
    /// WebSocket clients on the nodes' /v1/subscribe, one subscription each (0: none).
    /// They measure push latency and, with --verify, their last frames must equal the
    /// verified final state.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Shares of the subscribers: players of the run, channels of the run, top-N views
    /// (by concurrent, peak and follows in turn, 10 channels each).
    #[arg(long, default_value = "players=60,channels=35,top=5")]
    subscribe_mix: Mix,
    /// New connections per second, at most.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Handshakes (up to the snapshot) in flight, at most.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Every subscriber must have its snapshot within this many seconds.
    #[arg(long, default_value_t = 120)]
    connect_timeout: u64,
    /// Seconds the subscribers stay idle once all are subscribed, before the load starts.
    #[arg(long, default_value_t = 0)]
    subscribers_idle_secs: u64,
    /// The nodes' push.interval_ms: the final check waits a few of these.
    #[arg(long, default_value_t = 250)]
    push_interval_ms: u64,
    /// How long the final check retries subscriptions whose last frame differs, seconds.
    #[arg(long, default_value_t = 15)]
    final_check_secs: u64,
}

#[derive(Args)]
struct PlayersArgs {
    /// Number of players.
    #[arg(long, default_value_t = 1_000_000)]
    players: u64,
    /// Number of channels followed and chatted in.
    #[arg(long, default_value_t = 5_000)]
    channels: u64,
    /// Number of events to send.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ViewersArgs {
    /// Concurrent viewers.
    #[arg(long, default_value_t = 500_000)]
    viewers: u64,
    /// Channels (Zipf popularity: channel 0 is the most watched).
    #[arg(long, default_value_t = 5_000)]
    channels: u64,
    /// Simulated length of the run, event-time seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Time compression: 10 runs 600 simulated seconds in 60 wall seconds.
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct BaselineArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topics to read, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "player-events,channel-events"
    )]
    topics: Vec<String>,
    /// Stop after this many records.
    #[arg(long)]
    records: u64,
    /// poll: rdkafka's poll, a record per call (the plain consumer); batch: batches, as a
    /// node's poll loop reads.
    #[arg(long, value_enum, default_value_t = baseline::Read::Poll)]
    read: baseline::Read,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct ConsumeRateArgs {
    /// The node's API address (host:port).
    #[arg(long)]
    node: String,
    /// Stop when the node has applied this many records.
    #[arg(long)]
    records: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn parse_rate(s: &str) -> anyhow::Result<Option<f64>> {
    if s == "max" {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(Some(r)),
        _ => bail!("--rate: expected a positive number of events per second or \"max\", got {s:?}"),
    }
}

fn write_json(
    path: &Option<std::path::PathBuf>,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(value)? + "\n")
            .with_context(|| format!("write {}", p.display()))?;
        eprintln!("tally-loadtest: results written to {}", p.display());
    }
    Ok(())
}

/// Checks the options every scenario shares.
fn check_common(c: &Common) -> anyhow::Result<()> {
    if c.batch == 0 || c.lanes == 0 {
        bail!("--batch and --lanes must be at least 1");
    }
    if c.via == ViaArg::None && c.verify {
        bail!("--verify: nothing reaches a cluster with --via none");
    }
    if (c.verify || c.via == ViaArg::Http) && c.nodes.is_empty() {
        bail!(
            "--nodes: name at least one Tally API address (host:port) for --verify or --via http"
        );
    }
    let s = &c.subscribe;
    if s.subscribers > 0 {
        if c.nodes.is_empty() || !c.verify || c.via == ViaArg::None {
            bail!("--subscribers: needs --nodes to subscribe to, --verify for the final check, and a --via that reaches the cluster");
        }
        if !(s.connect_rate > 0.0 && s.connect_rate.is_finite()) || s.connect_concurrency == 0 {
            bail!("--connect-rate and --connect-concurrency must be above 0");
        }
    }
    Ok(())
}

/// Ids of this run start with the given prefix, or "lt<seed>-<unix time>-".
fn id_prefix(c: &Common, now: Duration) -> String {
    c.id_prefix
        .clone()
        .unwrap_or_else(|| format!("lt{}-{}-", c.seed, now.as_secs()))
}

async fn players(args: PlayersArgs) -> anyhow::Result<bool> {
    let c = &args.common;
    if args.players == 0 || args.channels == 0 {
        bail!("--players and --channels must be at least 1");
    }
    check_common(c)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let prefix = id_prefix(c, now);
    let spec = PlayersSpec {
        players: args.players,
        channels: args.channels,
        events: args.events,
        seed: c.seed,
        id_prefix: prefix.clone(),
        // Backdated by the stream's longest span (an event advances time by at most 2 ms),
        // so no event is ever dated after its arrival, however fast it is sent: the
        // cluster skips events more than shard.future_tolerance_secs ahead.
        start_ts: now.as_millis() as i64 - PlayersGen::MAX_STEP_MS * args.events as i64,
    };
    let opts = DriveOpts {
        batch: c.batch,
        rate: parse_rate(&c.rate)?,
        event_time: None,
        lanes: c.lanes,
        pipeline: 8,
        api_key: c.api_key.clone(),
        stamp_send_time: stamps(c),
    };
    let player = |n| players::player_id(&prefix, n);
    let channel = |n| players::channel_id(&prefix, n);
    let population = Population {
        players: args.players,
        channels: args.channels,
        player_id: &player,
        channel_id: &channel,
    };
    run(
        "players",
        c,
        &prefix,
        args.events,
        PlayersGen::new(spec),
        opts,
        &population,
    )
    .await
}

/// Events carry their send time with --stamp-send-time, and always with subscribers
/// (push latency is measured from it).
fn stamps(c: &Common) -> bool {
    c.stamp_send_time || c.subscribe.subscribers > 0
}

async fn viewers(args: ViewersArgs) -> anyhow::Result<bool> {
    let c = &args.common;
    if args.viewers == 0 || args.channels == 0 || args.duration == 0 {
        bail!("--viewers, --channels and --duration must be at least 1");
    }
    if args.viewers > u32::MAX as u64 || args.channels > u32::MAX as u64 {
        bail!("--viewers and --channels must be at most {}", u32::MAX);
    }
    if !(args.speedup > 0.0 && args.speedup.is_finite()) {
        bail!(
            "--speedup: expected a positive number, got {}",
            args.speedup
        );
    }
    check_common(c)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let prefix = id_prefix(c, now);
    // Faster than real time, event time would run ahead of arrival (and be skipped once
    // more than shard.future_tolerance_secs ahead): start a whole run's span back.
    let backdate = if args.speedup > 1.0 {
        args.duration as i64 * 1000
    } else {
        0
    };
    let start_ts = now.as_millis() as i64 - backdate;
    let spec = ViewersSpec::new(
        args.viewers,
        args.channels,
        args.duration,
        c.seed,
        prefix.clone(),
        start_ts,
    );
    // Heartbeats plus switches: an estimate for the progress display.
    let total = args.viewers * (args.duration / spec.heartbeat_secs + args.duration / 60 + 1);
    // One lane: a channel's events come from many viewers, and its peak depends on their order.
    let opts = DriveOpts {
        batch: c.batch,
        rate: None,
        event_time: Some((start_ts, args.speedup)),
        lanes: 1,
        pipeline: 8,
        api_key: c.api_key.clone(),
        stamp_send_time: stamps(c),
    };
    let viewer = |n| viewers::viewer_id(&prefix, n);
    let channel = |n| players::channel_id(&prefix, n);
    let population = Population {
        players: args.viewers,
        channels: args.channels,
        player_id: &viewer,
        channel_id: &channel,
    };
    let events = ViewersGen::new(spec);
    run("viewers", c, &prefix, total, events, opts, &population).await
}

/// Sends a scenario's events, measures, verifies, reports; with subscribers, connects them
/// first and checks their last frames after the verification.
async fn run(
    scenario: &str,
    c: &Common,
    prefix: &str,
    total: u64,
    events: impl Iterator<Item = tally_node::event::Event>,
    opts: DriveOpts,
    population: &Population<'_>,
) -> anyhow::Result<bool> {
    let kafka = c.kafka.config();
    let channel_partitions = match tally_loadtest::topic_partitions(&kafka).await {
        Ok((_, ch)) => ch,
        Err(_) if c.via == ViaArg::None => 8,
        Err(e) if c.via == ViaArg::Http => {
            eprintln!("tally-loadtest: cannot read channel partitions ({e:#}); channel concurrency checks assume 8");
            8
        }
        Err(e) => return Err(e),
    };
    let mut expected = Expected::new(channel_partitions, c.viewer_timeout_secs as i64 * 1000);
    let via = Arc::new(match c.via {
        ViaArg::Kafka => Via::Kafka(Box::new(kafka)),
        ViaArg::Http => Via::Http(c.nodes.clone()),
        ViaArg::None => Via::Discard,
    });
    let mut usage = c.node_pid.map(|pid| NodeUsage {
        pid,
        ..Default::default()
    });
    let subs = match c.subscribe.subscribers {
        0 => None,
        n => Some(connect_subscribers(c, n, population, prefix, usage.as_mut()).await?),
    };
    let progress = Arc::new(Progress::default());
    let ctrl_c = {
        let progress = progress.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("tally-loadtest: Ctrl-C: stopping after the batches in flight");
                progress.stop.store(true, Ordering::SeqCst);
            }
        })
    };
    let ticker = tokio::spawn(report::progress_loop(progress.clone(), total));
    let probes = (c.probe_interval_ms > 0).then(|| {
        tokio::spawn(probe::run(
            via.clone(),
            c.nodes.clone(),
            c.api_key.clone(),
            prefix.to_string(),
            Duration::from_millis(c.probe_interval_ms),
            progress.clone(),
        ))
    });
    let load_start = node_sample(c.node_pid)?;
    let started = Instant::now();
    let sent = drive::drive(events, &via, &opts, &mut expected, &progress).await;
    let secs = started.elapsed().as_secs_f64();
    let load_end = Instant::now();
    let interrupted = progress.stop.swap(true, Ordering::SeqCst);
    ctrl_c.abort();
    let per_second = ticker.await.unwrap_or_default();
    let probe_times = match probes {
        Some(p) => p.await.unwrap_or_default(),
        None => probe::ProbeTimes::default(),
    };
    sent?;
    let events_sent = progress.sent.load(Ordering::Relaxed);
    if let (Some(usage), Some(start)) = (usage.as_mut(), load_start) {
        // The node's CPU for the load: until it has applied what was sent (it keeps up at
        // the rates measured; the window is the same with and without subscribers).
        tokio::time::sleep_until((load_end + LOAD_SETTLE).into()).await;
        let end = Sample::read(usage.pid)?;
        usage.rss_kib_at_start = start.rss_kib;
        usage.load(&start, &end, events_sent);
    }
    let mut report = RunReport {
        scenario: scenario.into(),
        seed: c.seed,
        via: match c.via {
            ViaArg::Kafka => "kafka",
            ViaArg::Http => "http",
            ViaArg::None => "none",
        }
        .into(),
        events_sent,
        errors: progress.errors.load(Ordering::Relaxed),
        secs,
        events_per_sec: events_sent as f64 / secs.max(1e-9),
        per_second,
        latency: probe_times.visible_latency(),
        ack_latency: probe_times.ack_latency(),
        verify: None,
        subscribers: None,
        node: None,
        interrupted,
    };
    if c.verify && !interrupted {
        eprintln!(
            "tally-loadtest: verifying {} players and {} channels",
            expected.players.len(),
            expected.channels.len()
        );
        let v = verify::verify(
            &expected,
            &VerifyOpts {
                nodes: c.nodes.clone(),
                timeout: Duration::from_secs(c.verify_timeout),
                sample: c.sample,
                seed: c.seed,
                concurrency: 64,
                api_key: c.api_key.clone(),
            },
        )
        .await;
        for m in v.mismatches.iter().take(50) {
            eprintln!("MISMATCH {m}");
        }
        report.verify = Some(v);
    }
    if let Some(subs) = subs {
        let r = check_subscribers(c, subs, &expected, prefix, interrupted).await?;
        for m in r.mismatches.iter().take(50) {
            eprintln!("SUBSCRIBER MISMATCH {m}");
        }
        for p in &r.problems {
            eprintln!("tally-loadtest: subscribers: {p}");
        }
        report.subscribers = Some(r);
    }
    report.node = usage;
    println!("{}", report::table(&report));
    write_json(&c.json, &report)?;
    let exact = report
        .verify
        .as_ref()
        .is_none_or(|v| v.mismatches.is_empty())
        && report.subscribers.as_ref().is_none_or(|s| s.exact());
    Ok(exact && report.errors == 0)
}

/// How long after the last batch the node's CPU for the load is read (`--node-pid`).
const LOAD_SETTLE: Duration = Duration::from_secs(2);
/// Sockets of the process besides the subscribers' (Kafka, HTTP clients, probes).
const OTHER_FILES: u64 = 1_000;

fn node_sample(pid: Option<u32>) -> anyhow::Result<Option<Sample>> {
    pid.map(Sample::read).transpose()
}

/// Raises the open-file limit, connects `n` subscribers to targets of the run and waits
/// until each has its snapshot; with `--node-pid`, measures the node's memory before and
/// with them (idle for `--subscribers-idle-secs`).
async fn connect_subscribers(
    c: &Common,
    n: usize,
    population: &Population<'_>,
    prefix: &str,
    usage: Option<&mut NodeUsage>,
) -> anyhow::Result<Subscribers> {
    let s = &c.subscribe;
    let limit = subscribers::raise_open_files(n as u64 + OTHER_FILES)
        .with_context(|| format!("--subscribers {n}"))?;
    let targets = subscribers::plan(n, s.subscribe_mix, c.seed, population);
    eprintln!(
        "tally-loadtest: subscribers: connecting {n} ({}) at {} a second (open files: {limit})",
        s.subscribe_mix, s.connect_rate
    );
    let before = node_sample(c.node_pid)?;
    let subs = Subscribers::connect(
        targets,
        SubscribersOpts {
            nodes: c.nodes.clone(),
            api_key: c.api_key.clone(),
            connect_rate: s.connect_rate,
            connect_concurrency: s.connect_concurrency,
            connect_timeout: Duration::from_secs(s.connect_timeout),
            push_interval: Duration::from_millis(s.push_interval_ms),
            // The probes' own events, pushed: compared with their event-to-visible latency.
            probe: (c.probe_interval_ms > 0)
                .then(|| subscribers::Target::Player(probe::probe_player(prefix))),
        },
    )
    .await?;
    let connected = node_sample(c.node_pid)?;
    tokio::time::sleep(Duration::from_secs(s.subscribers_idle_secs)).await;
    let idle = node_sample(c.node_pid)?;
    if let (Some(u), Some(b), Some(cn), Some(i)) = (usage, before, connected, idle) {
        u.subscribers(&b, &cn, &i, n);
    }
    Ok(subs)
}

/// After the verification: each subscriber's last frame against the final state, then the
/// sockets closed and the report.
async fn check_subscribers(
    c: &Common,
    subs: Subscribers,
    expected: &Expected,
    prefix: &str,
    interrupted: bool,
) -> anyhow::Result<subscribers::SubscribersReport> {
    if interrupted {
        let mut r = subs
            .finish(Vec::new(), vec!["interrupted: not checked".into()])
            .await;
        r.checked = 0;
        return Ok(r);
    }
    let client = tally_loadtest::http_client(Duration::from_secs(10), c.api_key.as_deref())?;
    let (wants, notes) =
        subscribers::final_states(subs.targets(), expected, prefix, &c.nodes, &client).await?;
    eprintln!(
        "tally-loadtest: subscribers: checking the last frame of {} subscriptions",
        wants.len()
    );
    let mismatches = subs
        .check_final(&wants, Duration::from_secs(c.subscribe.final_check_secs))
        .await;
    Ok(subs.finish(mismatches, notes).await)
}

async fn consume_rate(args: ConsumeRateArgs) -> anyhow::Result<bool> {
    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", args.node);
    let applied = || async {
        let text = client.get(&url).send().await.ok()?.text().await.ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("tally_records_applied_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let now = Instant::now();
        let n = applied().await.unwrap_or(0);
        if n > 0 && first.is_none() {
            first = Some((now, n));
        }
        if n >= args.records {
            let (t0, n0) = first.expect("set above");
            let secs = now.duration_since(t0).as_secs_f64().max(1e-3);
            let result = serde_json::json!({ "records": n, "secs": secs, "records_per_sec": (n - n0) as f64 / secs });
            println!("{result}");
            write_json(&args.json, &result)?;
            return Ok(true);
        }
        if now > deadline {
            bail!(
                "node {} applied only {n} of {} records within {} s",
                args.node,
                args.records,
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Players(a) => players(a).await,
        Command::Viewers(a) => viewers(a).await,
        Command::Baseline(a) => tokio::task::spawn_blocking(move || {
            let r = baseline::consume_and_discard(
                &a.brokers,
                &a.topics,
                a.records,
                Duration::from_secs(3),
                a.read,
            )?;
            println!("{}", serde_json::to_string(&r)?);
            write_json(&a.json, &r)?;
            Ok(true)
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("baseline task: {e}"))),
        Command::ConsumeRate(a) => consume_rate(a).await,
        Command::Failover(a) => {
            async {
                let prefix = format!("fo{}-", std::process::id());
                let r = tally_loadtest::cluster_bench::failover(
                    &a.kafka.config(),
                    &a.survivor,
                    &a.victim,
                    a.pid,
                    &prefix,
                )
                .await?;
                println!("{}", serde_json::to_string(&r)?);
                write_json(&a.json, &r)?;
                Ok(true)
            }
            .await
        }
        Command::QueryLatency(a) => {
            async {
                let step = (a.players / a.sample.max(1)).max(1);
                let ids: Vec<String> = (0..a.players)
                    .step_by(step as usize)
                    .take(a.sample as usize)
                    .map(|n| format!("{}p{n}", a.id_prefix))
                    .collect();
                let r = tally_loadtest::cluster_bench::query_latency(
                    &a.node,
                    &a.kafka.config(),
                    &ids,
                    a.rounds,
                )
                .await?;
                println!("{}", serde_json::to_string(&r)?);
                write_json(&a.json, &r)?;
                Ok(true)
            }
            .await
        }
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("tally-loadtest: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
