//! A cluster of real node processes on loopback for the tests that need several nodes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::model::get_json;
use super::{free_udp_port, NodeProcess, TestEnv};

/// Nodes n1..nN gossiping with each other on loopback.
pub struct Cluster {
    pub env: TestEnv,
    pub nodes: Vec<NodeProcess>,
}

impl Cluster {
    /// Starts `n` nodes (checkpoints every 200 ms, viewers time out after `timeout_secs`) and
    /// waits until they own every partition.
    pub async fn start(env: TestEnv, n: usize, timeout_secs: u64) -> Cluster {
        let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
        let seeds: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let nodes: Vec<NodeProcess> = (0..n)
            .map(|i| {
                let extra = format!(
                    "[shard]\ncheckpoint_interval_ms = 200\nviewer_timeout_secs = {timeout_secs}\n\
                     [cluster]\ncluster_id = \"{}\"\ngossip_addr = \"127.0.0.1:{}\"\nseeds = [{}]\n\
                     gossip_interval_ms = 100\nphi_threshold = 8.0\nhandover_timeout_ms = 10000\n",
                    env.name,
                    ports[i],
                    seeds.join(", ")
                );
                NodeProcess::start(&env, &format!("n{}", i + 1), &extra)
            })
            .collect();
        for node in &nodes {
            node.wait_ready(Duration::from_secs(60)).await;
        }
        let c = Cluster { env, nodes };
        c.wait_owned_by(&["n1", "n2", "n3"][..n], 0).await;
        c
    }

    /// Partition -> owner, as node `via` sees the cluster.
    pub async fn owners(&self, via: usize) -> Result<BTreeMap<String, String>, String> {
        let v = get_json(&reqwest::Client::new(), &self.nodes[via].url("/v1/cluster")).await?;
        Ok(v["partitions"]
            .as_object()
            .ok_or("no partitions")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect())
    }

    /// Waits until every partition is advertised and exactly `nodes` own them (as `via`
    /// sees it); returns how long it took.
    pub async fn wait_owned_by(&self, nodes: &[&str], via: usize) -> Duration {
        let started = Instant::now();
        let total = 2 * self.env.partitions as usize;
        loop {
            if let Ok(owners) = self.owners(via).await {
                let mut who: Vec<&str> = owners.values().map(String::as_str).collect();
                who.sort_unstable();
                who.dedup();
                if owners.len() == total && who == nodes {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "partitions not owned by {nodes:?} after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
