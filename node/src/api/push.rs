//! The push endpoints: the WebSocket `GET /v1/subscribe` and the SSE streams (docs/API.md,
//! "Push").
//!
//! A WebSocket session runs on the actix worker that accepted it: it reads the client's
//! messages and the latest frame of each feed it follows (`push::Hub`), and sends every
//! frame within `push.blocked_timeout_ms` or closes the socket (4008). An SSE stream is a
//! response body that yields each feed's latest frame when the socket can take it.
//!
//! Not for: where frames come from (see `push`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use bytestring::ByteString;
use futures::StreamExt;
use serde_json::json;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamMap;
use tracing::warn;

use super::{auth, core, params, ApiError, Data};
use crate::auth::{Caller, Scope};
use crate::kind::ShardKind;
use crate::log_limit::LogLimit;
use crate::partitioner::partition_for;
use crate::push::protocol::{self, Command, Malformed, Target, TopByName};
use crate::push::{Connection, Feed, FeedKey, Frame, Hub};
use crate::state::NodeState;

/// A ping this often; a client silent for [`SILENT`] is gone.
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENT: Duration = Duration::from_secs(75);
/// An SSE comment this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Close code of a client that stopped reading.
const SLOW_CLIENT: u16 = 4008;
/// How long the close frame to a slow client may wait.
const CLOSE_SLOW: Duration = Duration::from_millis(100);

static SLOW_LOG: LogLimit = LogLimit::new(Duration::from_secs(10));

fn refused(e: crate::push::PushError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// Whether `caller` may follow `target`: the cluster view needs `admin`, the rest `read`
/// (which the route already checked).
fn allowed(caller: &Caller, target: &Target) -> bool {
    match (caller, target) {
        (Caller::Key(key), Target::Cluster) => key.has(Scope::Admin),
        _ => true,
    }
}

/// `GET /v1/subscribe`: upgrades to a WebSocket session.
/// The node's push feeds, as the handlers get them.
type PushHub = web::Data<Arc<Hub>>;

pub(super) async fn subscribe(
    state: Data,
    hub: PushHub,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    core(&state)?;
    let connection = hub.connect().map_err(refused)?;
    let (response, session, messages) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::BadRequest(format!(
            "websocket: {e}: /v1/subscribe takes a WebSocket upgrade"
        ))
    })?;
    let max = hub.cfg().max_message_bytes;
    let messages = messages
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let caller = auth::caller(&req);
    let session_state = SessionState {
        state: state.get_ref().clone(),
        hub: hub.get_ref().clone(),
        session,
        caller,
        feeds: StreamMap::new(),
        current: HashMap::new(),
        _connection: connection,
    };
    actix_web::rt::spawn(session_state.run(messages));
    Ok(response)
}

/// One WebSocket session.
struct SessionState {
    state: Arc<NodeState>,
    hub: Arc<Hub>,
    session: Session,
    caller: Caller,
    /// The feeds followed, by subscription name.
    feeds: StreamMap<String, WatchStream<Option<Arc<Frame>>>>,
    /// Each subscription's feed and whether its snapshot went out.
    current: HashMap<String, (Feed, bool)>,
    _connection: Connection,
}

/// Why a session ends.
enum End {
    /// The client closed or went away: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(CloseReason),
}

fn close(code: CloseCode, description: impl Into<String>) -> End {
    End::Close(CloseReason {
        code,
        description: Some(description.into()),
    })
}

impl SessionState {
    async fn run(mut self, mut messages: AggregatedMessageStream) {
        let cfg = self.hub.cfg().clone();
        let shutdown = self.state.shutdown.clone();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut heard = Instant::now();
        let end = loop {
            let step = tokio::select! {
                _ = shutdown.cancelled() => Err(close(CloseCode::Away, "node shutting down: reconnect to any node")),
                message = messages.recv() => {
                    heard = Instant::now();
                    self.on_message(message, cfg.max_message_bytes).await
                }
                Some((name, frame)) = self.feeds.next(), if !self.feeds.is_empty() => {
                    self.on_frame(&name, frame).await
                }
                _ = ping.tick() => {
                    if heard.elapsed() > SILENT {
                        Err(close(CloseCode::Normal, "no answer to pings"))
                    } else {
                        self.send_bytes(|s| Box::pin(s.ping(b""))).await
                    }
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Close(reason) = end {
            // A slow client's socket is blocked already: a close frame gets a moment only.
            let slow = reason.code == CloseCode::Other(SLOW_CLIENT);
            let wait = if slow {
                CLOSE_SLOW
            } else {
                cfg.blocked_timeout()
            };
            let _ = tokio::time::timeout(wait, self.session.close(Some(reason))).await;
        }
    }

    async fn on_message(
        &mut self,
        message: Option<Result<AggregatedMessage, actix_ws::ProtocolError>>,
        max: usize,
    ) -> Result<(), End> {
        match message {
            None => Err(End::Gone),
            Some(Err(actix_ws::ProtocolError::Overflow)) => Err(close(
                CloseCode::Size,
                format!("message too big: at most {max} bytes"),
            )),
            Some(Err(e)) => Err(close(CloseCode::Protocol, e.to_string())),
            Some(Ok(AggregatedMessage::Text(text))) => match protocol::parse(&text) {
                Ok(Command::Subscribe(target)) => self.on_subscribe(target).await,
                Ok(Command::Unsubscribe(target)) => self.on_unsubscribe(target).await,
                Err(e) => self.send_error(e, None).await,
            },
            Some(Ok(AggregatedMessage::Binary(_))) => {
                let e = Malformed {
                    field: "message".into(),
                    reason: "binary messages are not accepted: send JSON text".into(),
                };
                self.send_error(e, None).await
            }
            Some(Ok(AggregatedMessage::Ping(bytes))) => {
                self.send_bytes(move |s| Box::pin(async move { s.pong(&bytes).await }))
                    .await
            }
            Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
            Some(Ok(AggregatedMessage::Close(_))) => Err(End::Gone),
        }
    }

    async fn on_subscribe(&mut self, target: Target) -> Result<(), End> {
        let name = target.name();
        if !allowed(&self.caller, &target) {
            let e = Malformed {
                field: "subscribe".into(),
                reason: "the cluster view needs a key with the scope admin".into(),
            };
            return self.send_error(e, Some(&name)).await;
        }
        if let Some((feed, sent)) = self.current.get_mut(&name) {
            // Already followed: its snapshot again, counted once.
            let frame = feed.borrow().clone();
            if let Some(frame) = frame {
                *sent = true;
                return self.send(frame.snapshot()).await;
            }
            return Ok(());
        }
        let max = self.hub.cfg().max_subscriptions;
        if self.current.len() >= max {
            let e = Malformed {
                field: "subscribe".into(),
                reason: format!("at most {max} subscriptions per connection"),
            };
            return self.send_error(e, Some(&name)).await;
        }
        let key = FeedKey {
            target,
            local_only: false,
        };
        let feed = self.hub.subscribe(&self.state, key);
        self.feeds
            .insert(name.clone(), WatchStream::new(feed.clone()));
        self.current.insert(name, (feed, false));
        Ok(())
    }

    async fn on_unsubscribe(&mut self, target: Target) -> Result<(), End> {
        let name = target.name();
        if self.current.remove(&name).is_none() {
            let e = Malformed {
                field: "unsubscribe".into(),
                reason: format!("not subscribed to {name}"),
            };
            return self.send_error(e, Some(&name)).await;
        }
        self.feeds.remove(&name);
        let text = json!({ "type": "unsubscribed", "subscription": name }).to_string();
        self.send(text.into()).await
    }

    async fn on_frame(&mut self, name: &str, frame: Option<Arc<Frame>>) -> Result<(), End> {
        let Some(frame) = frame else { return Ok(()) };
        let Some((_, sent)) = self.current.get_mut(name) else {
            return Ok(());
        };
        let update = std::mem::replace(sent, true);
        let text = if update {
            frame.update.clone()
        } else {
            frame.snapshot()
        };
        self.send(text).await?;
        // A snapshot is the feed's frame as it stood, however old: no wait of the push.
        if update {
            let waited = frame.made.elapsed();
            self.hub.metrics().observe_frame_to_socket(waited);
        }
        Ok(())
    }

    async fn send_error(&mut self, e: Malformed, subscription: Option<&str>) -> Result<(), End> {
        let mut frame = json!({ "type": "error", "field": e.field, "error": e.to_string() });
        if let Some(name) = subscription {
            frame["subscription"] = json!(name);
        }
        self.send(frame.to_string().into()).await
    }

    async fn send(&mut self, text: ByteString) -> Result<(), End> {
        self.send_bytes(move |s| Box::pin(async move { s.text(text).await }))
            .await?;
        self.hub.metrics().frame_sent();
        Ok(())
    }

    /// Runs one send on the session within `push.blocked_timeout_ms`.
    async fn send_bytes<F>(&mut self, send: F) -> Result<(), End>
    where
        F: for<'a> FnOnce(
            &'a mut Session,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), actix_ws::Closed>> + 'a>,
        >,
    {
        let blocked = self.hub.cfg().blocked_timeout();
        match tokio::time::timeout(blocked, send(&mut self.session)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                self.hub.metrics().slow_client_closed();
                if let Some(suppressed) = SLOW_LOG.allow() {
                    warn!(
                        blocked_ms = blocked.as_millis() as u64,
                        suppressed, "push: closed a slow client (its socket stayed blocked)"
                    );
                }
                Err(close(
                    CloseCode::Other(SLOW_CLIENT),
                    format!(
                        "slow client: blocked for more than {} ms",
                        blocked.as_millis()
                    ),
                ))
            }
        }
    }
}

/// An SSE response following `feed` until it ends or the node shuts down.
fn event_stream(state: &NodeState, hub: &Hub, feed: Feed, connection: Connection) -> HttpResponse {
    struct Open {
        frames: WatchStream<Option<Arc<Frame>>>,
        first: bool,
        keep_alive: tokio::time::Interval,
        shutdown: tokio_util::sync::CancellationToken,
        metrics: crate::metrics::PushMetrics,
        _connection: Connection,
    }
    let open = Open {
        frames: WatchStream::new(feed),
        first: true,
        keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE),
        shutdown: state.shutdown.clone(),
        metrics: hub.metrics().clone(),
        _connection: connection,
    };
    let body = futures::stream::unfold(open, |mut open| async move {
        loop {
            tokio::select! {
                frame = open.frames.next() => match frame {
                    None => return None,
                    Some(None) => continue,
                    Some(Some(frame)) => {
                        let (kind, text) = if open.first {
                            ("snapshot", frame.snapshot())
                        } else {
                            ("update", frame.update.clone())
                        };
                        let update = !std::mem::replace(&mut open.first, false);
                        let event = Bytes::from(format!("event: {kind}\ndata: {text}\n\n"));
                        open.metrics.frame_sent();
                        if update {
                            open.metrics.observe_frame_to_socket(frame.made.elapsed());
                        }
                        return Some((Ok::<_, Infallible>(event), open));
                    }
                },
                _ = open.keep_alive.tick() => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), open));
                }
                _ = open.shutdown.cancelled() => return None,
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(body)
}

/// The SSE stream of `key`'s feed, counted against the connection limit.
fn follow(state: &Data, hub: &PushHub, key: FeedKey) -> Result<HttpResponse, ApiError> {
    let connection = hub.connect().map_err(refused)?;
    let feed = hub.subscribe(state, key);
    Ok(event_stream(state, hub, feed, connection))
}

/// The stream of one player or channel. Asked by another node's relay, it is served only
/// from this node's own shard (503 if it does not own the entity), so relays never chain.
async fn entity_stream(
    state: &Data,
    hub: &PushHub,
    req: &HttpRequest,
    kind: ShardKind,
    id: String,
) -> Result<HttpResponse, ApiError> {
    let core = core(state)?;
    let local_only = auth::caller(req).is_peer();
    if local_only {
        let partition = partition_for(&id, core.partitions(kind));
        if core.shard((kind, partition)).is_none() {
            return Err(ApiError::Unavailable(format!(
                "push: this node does not own {} partition {partition}",
                kind.label()
            )));
        }
    }
    let target = match kind {
        ShardKind::Players => Target::Player(id),
        ShardKind::Channels => Target::Channel(id),
    };
    follow(state, hub, FeedKey { target, local_only })
}

/// `GET /v1/players/{id}/stream` and `GET /v1/channels/{id}/stream`.
async fn path_stream(
    state: Data,
    hub: PushHub,
    req: HttpRequest,
    path: web::Path<String>,
    kind: ShardKind,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    params::path_id(kind, &id)?;
    entity_stream(&state, &hub, &req, kind, id).await
}

pub(super) async fn player_stream(
    state: Data,
    hub: PushHub,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    path_stream(state, hub, req, path, ShardKind::Players).await
}

pub(super) async fn channel_stream(
    state: Data,
    hub: PushHub,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    path_stream(state, hub, req, path, ShardKind::Channels).await
}

/// `GET /v1/stream?player=<id>` or `?channel=<id>`: every id, also those a path cannot carry.
pub(super) async fn stream_by_query(
    state: Data,
    hub: PushHub,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = params::stream_target(req.query_string())?;
    entity_stream(&state, &hub, &req, kind, id).await
}

pub(super) async fn top_stream(
    state: Data,
    hub: PushHub,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let top = params::top(req.query_string())?;
    core(&state)?;
    let by = TopByName::parse(top.by_name).unwrap_or(TopByName::Concurrent);
    let target = Target::Top {
        by,
        limit: top.limit,
    };
    let key = FeedKey {
        target,
        local_only: false,
    };
    follow(&state, &hub, key)
}

pub(super) async fn cluster_stream(state: Data, hub: PushHub) -> Result<HttpResponse, ApiError> {
    core(&state)?;
    let key = FeedKey {
        target: Target::Cluster,
        local_only: false,
    };
    follow(&state, &hub, key)
}
