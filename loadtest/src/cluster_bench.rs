//! Cluster measurements: failover time after kill -9, and query latency through a
//! non-owner node versus on the owner.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use tally_node::config::KafkaConfig;
use tally_node::entity_path::entity_path;
use tally_node::event::{Event, EventBody};
use tally_node::ingest::records_for;
use tally_node::kind::ShardKind;
use tally_node::partitioner::partition_for;

use crate::probe::Latency;

/// Partition owners as a node reports them: "players/3" -> node id; and node id -> API.
pub async fn ownership(
    node: &str,
) -> anyhow::Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let v: serde_json::Value = reqwest::get(format!("http://{node}/v1/cluster"))
        .await
        .with_context(|| format!("GET {node}/v1/cluster"))?
        .json()
        .await?;
    let owners = v["partitions"]
        .as_object()
        .context("no partitions in cluster view")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let apis = v["members"]
        .as_array()
        .context("no members in cluster view")?
        .iter()
        .filter_map(|m| {
            Some((
                m["node_id"].as_str()?.to_string(),
                m["api_addr"].as_str()?.to_string(),
            ))
        })
        .collect();
    Ok((owners, apis))
}

/// The result of a failover measurement.
#[derive(Debug, Serialize)]
pub struct Failover {
    pub killed_node: String,
    pub partitions_moved: usize,
    /// From kill -9 to an event produced after the kill being visible, for every moved
    /// partition, on a surviving node.
    pub secs: f64,
    pub per_partition_secs: Vec<f64>,
}

/// Kills `pid` (the node `victim`) with SIGKILL and measures how long until each of its
/// player partitions processes new events again on the survivors: one probe player per
/// partition gets a `level_up` every 20 ms; a partition is back when a survivor shows a
/// level sent after the kill.
pub async fn failover(
    kafka: &KafkaConfig,
    survivor: &str,
    victim: &str,
    pid: u32,
    prefix: &str,
) -> anyhow::Result<Failover> {
    let (owners, _) = ownership(survivor).await?;
    let (partitions, _) = crate::topic_partitions(kafka).await?;
    let moved: Vec<i32> = owners
        .iter()
        .filter(|(k, v)| k.starts_with("players/") && v.as_str() == victim)
        .filter_map(|(k, _)| k["players/".len()..].parse().ok())
        .collect();
    if moved.is_empty() {
        bail!("node {victim} owns no player partition");
    }
    // One probe player per moved partition.
    let mut probes: Vec<(i32, String)> = Vec::new();
    for p in &moved {
        let id = (0..)
            .map(|i| format!("{prefix}failover-{i}"))
            .find(|id| partition_for(id, partitions) == *p)
            .expect("some key hashes to every partition");
        probes.push((*p, id));
    }
    let producer = crate::drive::kafka_producer(kafka, crate::topic_partitions(kafka).await?)?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 {pid} failed");
    }
    let killed = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut level = 1_000u32;
    let mut done: BTreeMap<i32, f64> = BTreeMap::new();
    while done.len() < probes.len() {
        if killed.elapsed() > Duration::from_secs(120) {
            bail!(
                "partitions {:?} not processing 120 s after the kill",
                probes
                    .iter()
                    .filter(|(p, _)| !done.contains_key(p))
                    .collect::<Vec<_>>()
            );
        }
        level += 1;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let events: Vec<Event> = probes
            .iter()
            .filter(|(p, _)| !done.contains_key(p))
            .map(|(_, id)| Event {
                v: 1,
                id: format!("{id}-{level}").into(),
                ts: now_ms,
                player: id.clone().into(),
                body: EventBody::LevelUp { level },
            })
            .collect();
        let records = events.iter().flat_map(records_for).collect();
        producer
            .produce(records)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (p, id) in &probes {
            if done.contains_key(p) {
                continue;
            }
            let r = client
                .get(format!(
                    "http://{survivor}{}",
                    entity_path(ShardKind::Players, id)
                ))
                .send()
                .await;
            if let Ok(r) = r {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    // Any level above 1000 was produced after the kill.
                    if v["stale"] == false
                        && v["player"]["level"].as_u64().is_some_and(|l| l > 1_000)
                    {
                        done.insert(*p, killed.elapsed().as_secs_f64());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let per: Vec<f64> = done.values().copied().collect();
    Ok(Failover {
        killed_node: victim.to_string(),
        partitions_moved: moved.len(),
        secs: per.iter().copied().fold(0.0, f64::max),
        per_partition_secs: per,
    })
}

/// Query latency of the same players asked on their owner and through another node.
#[derive(Debug, Serialize)]
pub struct QueryLatency {
    pub queries: u64,
    pub on_owner: Latency,
    pub via_non_owner: Latency,
}

pub async fn query_latency(
    node: &str,
    kafka: &KafkaConfig,
    players: &[String],
    rounds: usize,
) -> anyhow::Result<QueryLatency> {
    let (owners, apis) = ownership(node).await?;
    let (partitions, _) = crate::topic_partitions(kafka).await?;
    let client = reqwest::Client::new();
    let mut owner_h = Histogram::<u64>::new(3)?;
    let mut other_h = Histogram::<u64>::new(3)?;
    for _ in 0..rounds {
        for id in players {
            let owner = &owners[&format!("players/{}", partition_for(id, partitions))];
            let owner_api = &apis[owner];
            let other_api = apis
                .iter()
                .find(|(n, _)| *n != owner)
                .map(|(_, a)| a)
                .context("need two nodes")?;
            for (api, h) in [(owner_api, &mut owner_h), (other_api, &mut other_h)] {
                let t = Instant::now();
                let r = client
                    .get(format!(
                        "http://{api}{}",
                        entity_path(ShardKind::Players, id)
                    ))
                    .send()
                    .await?;
                let ok = r.status().is_success();
                let _ = r.bytes().await?;
                if ok {
                    h.record(t.elapsed().as_micros().max(1) as u64)?;
                }
            }
        }
    }
    Ok(QueryLatency {
        queries: owner_h.len() + other_h.len(),
        on_owner: Latency::from_histogram(&owner_h, 0),
        via_non_owner: Latency::from_histogram(&other_h, 0),
    })
}
