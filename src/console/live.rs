//! Live updates: one PostgreSQL connection per process LISTENs on `stepwise_saga_changed`
//! (a saga's status changed: `<id> <status>`, sent by the worker holding it or the engine's
//! trigger; a saga started already claimed by a local worker arrives here as `running`) and
//! `stepwise_work` (a saga was started or an operator made one due), and fans the
//! notifications out to the browsers over Server-Sent Events (`GET /console/events`). Pages
//! refetch their live part when told; nothing polls. After the listening connection was lost
//! (notifications in the gap are gone), every stream is told to refresh.

use crate::console::session::SignedIn;
use crate::console::Console;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use stepwise_engine::store::{SAGA_CHANGED_CHANNEL, WORK_CHANNEL};
use stepwise_engine::PgStore;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One notification: which saga changed (None: something, or everything after a gap), and
/// its new status when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub saga: Option<Uuid>,
    pub status: Option<String>,
}

impl Change {
    fn parse(channel: &str, payload: &str) -> Self {
        if channel != SAGA_CHANGED_CHANNEL {
            return Self {
                saga: None,
                status: Some(STARTED.to_string()),
            };
        }
        let mut parts = payload.split(' ');
        Self {
            saga: parts.next().and_then(|id| Uuid::parse_str(id).ok()),
            status: parts.next().map(str::to_string),
        }
    }

    fn data(&self) -> String {
        match (&self.saga, &self.status) {
            (Some(id), Some(status)) => format!("{id} {status}"),
            (Some(id), None) => id.to_string(),
            (None, Some(_)) => STARTED.to_string(),
            (None, None) => "refresh".to_string(),
        }
    }
}

/// The data of a change on `stepwise_work`: a saga was started (or made due).
const STARTED: &str = "started";

/// The feed of changes every SSE stream subscribes to.
#[derive(Debug, Clone)]
pub struct Live {
    sender: broadcast::Sender<Change>,
    stop: CancellationToken,
}

impl Live {
    /// A feed nobody writes to (for tests that do not need live updates).
    pub fn idle() -> Self {
        Self {
            sender: broadcast::channel(16).0,
            stop: CancellationToken::new(),
        }
    }

    /// Starts the listener on `store`'s database (its LISTEN connection, see
    /// [`PgStore::listener`]); it and every event stream stop when `stop` is cancelled.
    pub fn start(store: PgStore, stop: CancellationToken) -> Self {
        let live = Self {
            sender: broadcast::channel(1024).0,
            stop: stop.clone(),
        };
        let sender = live.sender.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = listen(store, sender) => {}
            }
        });
        live
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }
}

async fn listen(store: PgStore, sender: broadcast::Sender<Change>) {
    let mut pause = Duration::from_millis(200);
    loop {
        let mut listener = match store.listener().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "console: cannot connect to LISTEN; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all([SAGA_CHANGED_CHANNEL, WORK_CHANNEL])
            .await
        {
            tracing::warn!(error = %e, "console: LISTEN failed; retrying");
            tokio::time::sleep(pause).await;
            continue;
        }
        pause = Duration::from_millis(200);
        // Whatever happened while we were not listening: have every page refresh.
        let _ = sender.send(Change {
            saga: None,
            status: None,
        });
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    // No receivers is fine: nobody is watching.
                    let _ = sender.send(Change::parse(n.channel(), n.payload()));
                }
                Ok(None) => {
                    // The connection was lost and re-established by sqlx; the gap is unknown.
                    let _ = sender.send(Change {
                        saga: None,
                        status: None,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "console: the LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct EventsParams {
    /// Only this saga's changes (and refreshes); every change without it.
    saga: Option<Uuid>,
}

/// How long a stream gathers changes before it tells the page once.
const COALESCE: Duration = Duration::from_millis(250);

/// `GET /console/events`: `event: saga` messages whose data is `<id> <status>` or `refresh`.
pub async fn events(
    State(console): State<Console>,
    SignedIn(_, _): SignedIn,
    Query(params): Query<EventsParams>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = console.live.subscribe();
    let stop = console.live.stop.clone();
    let stream = futures::stream::unfold(
        (receiver, params.saga, stop),
        |(mut receiver, only, stop)| async move {
            loop {
                let received = tokio::select! {
                    _ = stop.cancelled() => return None,
                    received = receiver.recv() => received,
                };
                let change = match received {
                    Ok(change) => change,
                    Err(broadcast::error::RecvError::Lagged(_)) => Change {
                        saga: None,
                        status: None,
                    },
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                let relevant = match (only, change.saga, &change.status) {
                    (None, _, _) => true,
                    // A gap in the notifications: the saga may have changed.
                    (Some(_), None, None) => true,
                    (Some(want), got, _) => got == Some(want),
                };
                if !relevant {
                    continue;
                }
                // Many changes in a burst become one message.
                tokio::time::sleep(COALESCE).await;
                while receiver.try_recv().is_ok() {}
                let event = Event::default().event("saga").data(change.data());
                return Some((Ok(event), (receiver, only, stop)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_into_changes() {
        let id = Uuid::now_v7();
        let c = Change::parse(SAGA_CHANGED_CHANNEL, &format!("{id} compensated"));
        assert_eq!(c.saga, Some(id));
        assert_eq!(c.status.as_deref(), Some("compensated"));
        assert_eq!(c.data(), format!("{id} compensated"));
        let work = Change::parse(WORK_CHANNEL, "");
        assert_eq!(work.saga, None);
        assert_eq!(work.data(), "started");
        assert_eq!(
            Change {
                saga: None,
                status: None
            }
            .data(),
            "refresh"
        );
    }
}
