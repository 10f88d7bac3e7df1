//! The link driver: the one loop that keeps a broker link alive, whatever the link is (the
//! subscription to one server or the Sentinel master, the Redis Cluster subscription, the
//! Django Channels core layer's membership and inbox). A [`Link`] says how to connect, join and
//! leave groups, wait for its next message and probe its peer; [`drive`] does the rest:
//!
//! ```text
//!       +------------- backoff 100ms..5s with jitter (cut short by Link::retry_now) <-------------+
//!       v                                                                                         |
//! Link::connect --> join all wanted groups --> up: health + taskstream_broker_up + log,           |
//!   (bounded)                                  after a loss: hub.resubscribed() (catch-up)        |
//!                   loop { groups changed   -> join / leave those that changed                    |
//!                          Link::next       -> Link::handle (messages to the hub), then up to     |
//!                                              DRAIN more that wait already (Link::try_next)      |
//!                          keep-alive timer -> Link::keep_alive }                                 |
//!                   --LinkError--> down: health + metric + log, hub.link_lost(), unconfirm -------+
//!                   --shutdown---> Link::close
//! ```
//!
//! Up/down reporting ([`report`]) and the catch-up hand-off to sessions live here only, so every
//! source goes up, down and back the same way. Between connects the driver looks only at the
//! groups the hub says changed ([`Changes`]): a client joining costs the link O(its groups),
//! however many groups the hub holds.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error::LinkError;
use super::timeouts::COMMAND_TIMEOUT;
use crate::backoff::Backoff;
use crate::health::Health;
use crate::hub::{Changes, Hub};
use crate::metrics::Metrics;

/// Events handled after one that came through the driver's `select!`, when they wait already,
/// before it polls its other branches (and the runtime's budget) again. Under load the inbox
/// then empties in runs, so each client's queue gets several events per run and its session
/// writes them in one flush. More per run keeps the sessions' writers waiting longer: at 64 and
/// more, an overload closed clients as slow (README, Benchmarks, issue 21).
pub(crate) const DRAIN: usize = 32;

/// One kind of broker link. The driver owns the loop and the set of joined groups; the link
/// owns its connection's protocol.
pub(crate) trait Link: Send {
    /// A live connection (or set of connections) of this link.
    type Conn: Send;
    /// What [`Link::next`] waits for.
    type Event: Send;

    /// What logs call the link: "redis", "redis cluster", ...
    const KIND: &'static str;
    /// What logs call joining the wanted groups once connected: "subscribed", ...
    const JOINED: &'static str;
    /// Pub/sub drops whatever is published while the link is down, so after a loss sessions
    /// catch up from history once it is back. A queue (the Channels core inbox) keeps them.
    const DROPS_WHILE_DOWN: bool;
    /// How often [`Link::keep_alive`] probes the peer; `None` when the link's own traffic
    /// proves it alive (a blocking pop with a timeout).
    const KEEP_ALIVE: Option<Duration>;
    /// Whether this link is the broker's state (health, `taskstream_broker_up`, info logs).
    /// A helper link (the Channels core inbox) reports at debug level only.
    const REPORTS: bool = true;

    /// The server(s) as logs may name them (redacted).
    fn display(&self) -> &str;

    /// The longest [`Link::connect`] may take.
    fn connect_timeout(&self) -> Duration {
        COMMAND_TIMEOUT
    }

    /// Whether this link joins the hub's groups at all (the Channels core inbox joins none).
    const JOINS: bool = true;

    /// Whether this link serves `group` (sharding: other links serve the others).
    fn serves(&self, _group: &str) -> bool {
        true
    }

    /// Opens the connection(s).
    async fn connect(&mut self) -> Result<Self::Conn, LinkError>;

    /// Joins `groups` (subscribe, or add a group membership).
    async fn join(&mut self, conn: &mut Self::Conn, groups: &[String]) -> Result<(), LinkError>;

    /// Leaves `groups`; they are already out of the joined set.
    async fn leave(&mut self, conn: &mut Self::Conn, groups: &[String]) -> Result<(), LinkError>;

    /// Waits for the next thing to handle. Must be cancel-safe: the driver drops it when
    /// something else comes first.
    async fn next(&mut self, conn: &mut Self::Conn) -> Self::Event;

    /// What [`Link::next`] would return at once, if anything. After each event from its
    /// `select!` the driver handles up to [`DRAIN`] of these before it looks at anything else.
    fn try_next(&mut self, _conn: &mut Self::Conn) -> Option<Self::Event> {
        None
    }

    /// Handles what [`Link::next`] returned (runs to completion).
    async fn handle(
        &mut self,
        conn: &mut Self::Conn,
        joined: &BTreeSet<String>,
        event: Self::Event,
    ) -> Result<(), LinkError>;

    /// Proves the peer alive (PING), every [`Link::KEEP_ALIVE`].
    async fn keep_alive(
        &mut self,
        _conn: &mut Self::Conn,
        _joined: &BTreeSet<String>,
    ) -> Result<(), LinkError> {
        Ok(())
    }

    /// Resolves when waiting out the backoff is pointless (a failover named a new master).
    async fn retry_now(&mut self) {
        std::future::pending().await
    }

    /// On shutdown: what the link undoes in Redis (leave groups), best effort.
    async fn close(&mut self, _conn: Self::Conn, _joined: &BTreeSet<String>) {}
}

/// What a link reports to: the hub (confirmations, catch-up), the health flag and the metrics.
#[derive(Clone)]
pub(crate) struct Context {
    pub hub: Arc<Hub>,
    pub health: Arc<Health>,
    pub metrics: Metrics,
}

/// The broker is up or down: the health flag (`/readyz/broker`) and `taskstream_broker_up`,
/// always together.
pub fn report(health: &Health, metrics: &Metrics, up: bool) {
    health.set_broker_up(up);
    metrics.broker_up.set(i64::from(up));
}

/// Runs `link` until `shutdown`: connects, serves, and reconnects with backoff after a loss.
pub(crate) async fn drive<L: Link>(mut link: L, cx: Context, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    let mut connected_once = false;
    // Listening from before the first connect: a group created during it is not missed.
    let changes = L::JOINS.then(|| cx.hub.listen());
    loop {
        let within = link.connect_timeout();
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(within, link.connect()) => r,
        };
        let mut conn = match attempt.unwrap_or(Err(LinkError::Timeout {
            what: "connect".into(),
            after: within,
        })) {
            Ok(conn) => conn,
            Err(e) => {
                connect_failed::<L>(link.display(), &e, backoff.current());
                if !pause(&mut link, &mut backoff, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        if connected_once && L::REPORTS {
            cx.metrics.redis_reconnects.inc();
        }
        let mut joined = BTreeSet::new();
        let ended = serve(
            &mut link,
            &mut conn,
            &mut joined,
            changes.as_deref(),
            connected_once,
            &cx,
            &shutdown,
        )
        .await;
        connected_once = true;
        if L::REPORTS {
            report(&cx.health, &cx.metrics, false);
        }
        if L::DROPS_WHILE_DOWN {
            cx.hub.link_lost();
        }
        // Only this link's groups: with sharding, other links keep theirs.
        cx.hub
            .set_confirmed(joined.iter().map(String::as_str), false);
        match ended {
            Ok(()) => {
                link.close(conn, &joined).await;
                return;
            }
            Err(e) => {
                drop(conn);
                lost::<L>(link.display(), &e);
                if !pause(&mut link, &mut backoff, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// One connection's life: join, report up, then serve until it is lost (`Err`) or shutdown.
async fn serve<L: Link>(
    link: &mut L,
    conn: &mut L::Conn,
    joined: &mut BTreeSet<String>,
    changes: Option<&Changes>,
    reconnected: bool,
    cx: &Context,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    if let Some(changes) = changes {
        join_all(link, conn, joined, changes, &cx.hub).await?;
    }
    // Only now, with the subscriptions in place: whatever a session reads from history is
    // followed by live events without a gap.
    if L::REPORTS {
        info!(redis = %link.display(), groups = joined.len(), "{} {}", L::KIND, L::JOINED);
        report(&cx.health, &cx.metrics, true);
    } else {
        debug!(redis = %link.display(), "{} {}", L::KIND, L::JOINED);
    }
    if reconnected && L::DROPS_WHILE_DOWN {
        cx.hub.resubscribed();
    }
    let mut keep_alive = L::KEEP_ALIVE.map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t.reset();
        t
    });
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = changed(changes) => {
                if let Some(changes) = changes {
                    reconcile(link, conn, joined, changes.take(), &cx.hub).await?;
                }
            }
            event = link.next(conn) => {
                link.handle(conn, joined, event).await?;
                for _ in 0..DRAIN {
                    let Some(event) = link.try_next(conn) else { break };
                    link.handle(conn, joined, event).await?;
                }
            }
            _ = tick(&mut keep_alive) => link.keep_alive(conn, joined).await?,
        }
    }
}

/// On a fresh connection: joins every group this link serves that has local clients.
async fn join_all<L: Link>(
    link: &mut L,
    conn: &mut L::Conn,
    joined: &mut BTreeSet<String>,
    changes: &Changes,
    hub: &Hub,
) -> Result<(), LinkError> {
    // Taken first: whatever changes after the snapshot below is reconciled next.
    changes.take();
    let wanted = hub.wanted(|g| link.serves(g));
    if !wanted.is_empty() {
        link.join(conn, &wanted).await?;
        joined.extend(wanted);
    }
    hub.set_confirmed(joined.iter().map(String::as_str), true);
    Ok(())
}

/// Brings the joined groups in line with the hub, for the groups that `changed` only.
async fn reconcile<L: Link>(
    link: &mut L,
    conn: &mut L::Conn,
    joined: &mut BTreeSet<String>,
    changed: HashSet<String>,
    hub: &Hub,
) -> Result<(), LinkError> {
    let (present, absent) = hub.partition(changed.into_iter().filter(|g| link.serves(g)));
    let (mut add, mut again) = (Vec::new(), Vec::new());
    for g in present {
        // Joined already: the group was removed and made again since; it needs its
        // confirmation back, not a second subscription.
        if joined.contains(&g) {
            again.push(g);
        } else {
            add.push(g);
        }
    }
    let remove: Vec<String> = absent.into_iter().filter(|g| joined.contains(g)).collect();
    if !add.is_empty() {
        link.join(conn, &add).await?;
        debug!(groups = add.len(), "{}: joined", L::KIND);
        hub.set_confirmed(add.iter().map(String::as_str), true);
        joined.extend(add);
    }
    if !again.is_empty() {
        hub.set_confirmed(again.iter().map(String::as_str), true);
    }
    if !remove.is_empty() {
        // Forgotten first: a link that hears its own leave confirmed (the Cluster's
        // SUNSUBSCRIBE) must not take it for a dropped subscription to renew.
        for g in &remove {
            joined.remove(g);
        }
        link.leave(conn, &remove).await?;
        debug!(groups = remove.len(), "{}: left", L::KIND);
    }
    Ok(())
}

/// Resolves when the hub's groups changed; never for a link that joins none.
async fn changed(changes: Option<&Changes>) {
    match changes {
        Some(c) => c.changed().await,
        None => std::future::pending().await,
    }
}

/// The backoff delay, cut short when the link says to retry now.
async fn pause<L: Link>(link: &mut L, backoff: &mut Backoff, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        go_on = backoff.wait(shutdown) => go_on,
        _ = link.retry_now() => true,
    }
}

async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn connect_failed<L: Link>(server: &str, e: &LinkError, retry_in: Duration) {
    if !L::REPORTS {
        debug!(redis = %server, error = %e, ?retry_in, "{} connect failed; retrying", L::KIND);
        return;
    }
    match e.hint() {
        Some(hint) => {
            warn!(redis = %server, error = %e, ?retry_in, "{} connect failed: {hint}; clients stay connected, retrying", L::KIND)
        }
        None => {
            warn!(redis = %server, error = %e, ?retry_in, "{} connect failed; clients stay connected, retrying", L::KIND)
        }
    }
}

fn lost<L: Link>(server: &str, e: &LinkError) {
    if L::REPORTS {
        warn!(redis = %server, error = %e, "{} connection lost; clients stay connected, reconnecting and joining its groups again", L::KIND);
    } else {
        debug!(redis = %server, error = %e, "{} connection lost; reconnecting", L::KIND);
    }
}

#[cfg(test)]
mod tests;
