//! The dependency monitor behind `/readyz`: Kafka and Cassandra are checked every second
//! and the result recorded in the node's health.
//!
//! Not for: what readiness means (see `state::NodeState::readiness`).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{error, info, warn};

use crate::state::NodeState;

/// Checks Kafka and Cassandra every second and records the result for `/readyz`, until
/// the node starts to stop.
pub async fn monitor(state: Arc<NodeState>) {
    let brokers = state.cfg.kafka.brokers.clone();
    let consumer: Option<Arc<BaseConsumer>> = state
        .cfg
        .kafka
        .client_config()
        .create()
        .map(Arc::new)
        .map_err(|e| error!(error = %e, "cannot create kafka health client"))
        .ok();
    let contact = state.cfg.cassandra.contact_points.join(",");
    let mut was_ready = None;
    loop {
        let kafka = match &consumer {
            None => Err(format!("no client for {brokers}")),
            Some(c) => {
                let c = c.clone();
                let brokers = brokers.clone();
                tokio::task::spawn_blocking(move || {
                    c.fetch_metadata(None, Duration::from_secs(2))
                        .map(|_| ())
                        .map_err(|e| format!("unreachable at {brokers}: {e}"))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        let cassandra = match state.session.get() {
            None => Err(format!("not connected to {contact}")),
            Some(s) => match tokio::time::timeout(
                Duration::from_secs(2),
                s.query_unpaged("SELECT release_version FROM system.local", ()),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("unreachable at {contact}: {e}")),
                Err(_) => Err(format!("no answer from {contact} within 2 s")),
            },
        };
        state.set_health(|h| {
            h.kafka = Some(kafka);
            h.cassandra = Some(cassandra);
        });
        let r = state.readiness();
        if was_ready != Some(r.ready) {
            if r.ready {
                info!("ready");
            } else {
                warn!(missing = ?r.missing, "not ready");
            }
            was_ready = Some(r.ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}
