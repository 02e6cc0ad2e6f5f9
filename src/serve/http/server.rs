//! Serving on a socket: the accept loop, one HTTP/1.1 connection task per client, and graceful
//! shutdown (on the signal the listener stops accepting, in-flight requests get
//! `shutdown_timeout` to finish, then `serve` returns).
//!
//! Connections are bounded here, below the router, because a hostile client costs a descriptor
//! and a task before it has sent a single request:
//! - at most `--max-connections` are open; at the cap a new connection closes the oldest one that
//!   has no request in progress (an idle keep-alive, or one that never completed a request head),
//!   and when every connection is busy the newcomer gets a fixed 503 and is closed at once;
//! - a connection must complete its first request head within `--header-read-timeout-ms`;
//! - between requests a connection may stay idle for `--keep-alive-timeout-ms`.
//!
//! Time spent inside a request (reading its body, computing) is bounded by the body-rate
//! middleware and the request budget, not here.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use super::{AppState, router};

/// What a refused connection reads before it is closed: cheap (no task, no parsing).
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\n\
content-type: application/json\r\ncontent-length: 67\r\n\r\n\
{\"error\":\"too many open connections\",\"code\":\"too_many_connections\"}";

/// How long a connection told to close (idle, evicted) may take to finish writing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The connection limits of the configuration.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    keep_alive_timeout: Duration,
}

/// One open connection, as the accept loop and its own task see it.
struct Conn {
    /// Requests in progress (0 or 1 on HTTP/1.1).
    in_flight: AtomicUsize,
    /// Requests started on this connection so far.
    served: AtomicUsize,
    /// When it last became idle, and the timer its task has set.
    idle: Mutex<Idle>,
    /// Woken when the connection is evicted, or when a request ends whose new idle deadline
    /// the task's timer would miss (see [`Conn::arm`]).
    wake: Notify,
    /// Chosen for eviction by the accept loop.
    evicted: AtomicBool,
    /// `--keep-alive-timeout-ms`.
    keep_alive: Duration,
}

impl Conn {
    fn new(keep_alive: Duration) -> Self {
        Conn {
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            idle: Mutex::new(Idle {
                since: Instant::now(),
                timer: None,
            }),
            wake: Notify::new(),
            evicted: AtomicBool::new(false),
            keep_alive,
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When this connection times out if it stays idle, or None while a request is in progress.
    fn idle_deadline(&self, l: &Limits) -> Option<Instant> {
        self.deadline(&self.lock_idle(), l)
    }

    fn deadline(&self, idle: &Idle, l: &Limits) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        Some(if self.served.load(Ordering::Acquire) == 0 {
            idle.since + l.header_read_timeout
        } else {
            idle.since + l.keep_alive_timeout
        })
    }

    /// The idle deadline the task sets its timer for, recorded, or None while a request is in
    /// progress (whose end then wakes the task). A request that ends wakes the task only when
    /// the timer would fire after its new deadline (a keep-alive shorter than the header
    /// timeout, after the first request); usually it fires before, finds the connection busy or
    /// idle for less than its limit, and is set again: one wake-up per keep-alive period rather
    /// than a wake-up and two timer updates per request.
    fn arm(&self, l: &Limits) -> Option<Instant> {
        let mut idle = self.lock_idle();
        idle.timer = self.deadline(&idle, l);
        idle.timer
    }
}

/// The idle state of a connection, under one lock: the task sets its timer and a request ends
/// each seeing what the other did.
struct Idle {
    /// When the connection last became idle (accepted, or its last response was produced).
    since: Instant,
    /// When the task's idle timer fires, or None while it has none (a request was in progress
    /// when it looked).
    timer: Option<Instant>,
}

/// Marks a connection busy for the life of one request.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.served.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(conn))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut idle = self.0.lock_idle();
        idle.since = now;
        // Under the lock, so that `arm` sees the request either in progress or ended.
        let ended = self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1;
        // The deadline is now `now + keep-alive` (a request was served).
        let missed = idle.timer.is_none_or(|t| t > now + self.0.keep_alive);
        drop(idle);
        if ended && missed {
            self.0.wake.notify_one();
        }
    }
}

/// The open connections, in accept order, and their count (watched by the drain).
struct Connections {
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicUsize,
    count: watch::Sender<usize>,
}

impl Connections {
    fn new() -> Self {
        Connections {
            open: Mutex::new(BTreeMap::new()),
            next_id: AtomicUsize::new(0),
            count: watch::Sender::new(0),
        }
    }

    /// Registers a new connection, evicting the oldest idle one at the cap. None: refuse it.
    fn admit(&self, limits: &Limits) -> Option<(u64, Arc<Conn>)> {
        let max = limits.max_connections;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let live = open
            .values()
            .filter(|c| !c.evicted.load(Ordering::Acquire))
            .count();
        if live >= max {
            // Evicted connections close within CLOSE_GRACE; never let them pile up past 2x.
            if open.len() >= 2 * max {
                return None;
            }
            let victim = open
                .values()
                .find(|c| !c.evicted.load(Ordering::Acquire) && c.is_idle())?;
            victim.evicted.store(true, Ordering::Release);
            victim.wake.notify_one();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let conn = Arc::new(Conn::new(limits.keep_alive_timeout));
        open.insert(id, Arc::clone(&conn));
        self.count.send_replace(open.len());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.remove(&id);
        self.count.send_replace(open.len());
    }
}

/// Unregisters a connection when its task ends, however it ends.
struct Registered(Arc<Connections>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// Serves `state` on `listener` until `shutdown` resolves, then drains for at most
/// `drain_timeout`. Returns `Ok(true)` when every connection finished in time.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<bool> {
    let c = &state.config;
    let limits = Limits {
        max_connections: c.max_connections,
        header_read_timeout: c.header_read_timeout,
        keep_alive_timeout: c.keep_alive_timeout,
    };
    let app = router(state);
    let conns = Arc::new(Connections::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(
        listener,
        app,
        limits,
        Arc::clone(&conns),
        stop_rx,
    ));
    shutdown.await;
    tracing::info!(
        ?drain_timeout,
        open_connections = *conns.count.borrow(),
        "shutting down: no new connections, draining in-flight requests"
    );
    let _ = stop_tx.send(true);
    // The listener closes as soon as the accept loop sees the signal.
    let _ = accept.await;
    let mut count = conns.count.subscribe();
    let drained = tokio::time::timeout(drain_timeout, count.wait_for(|n| *n == 0))
        .await
        .is_ok();
    if !drained {
        tracing::warn!(
            open_connections = *conns.count.borrow(),
            "drain timeout reached; closing remaining connections"
        );
    }
    Ok(drained)
}

/// Whether an accept error concerns one connection only (retry at once) rather than the
/// process (descriptors exhausted: back off so as not to spin).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    conns: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    let mut refused: u64 = 0;
    let mut last_warn: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let Some((id, conn)) = conns.admit(&limits) else {
            // Refused without a task: one non-blocking write, then the descriptor is closed.
            let _ = stream.try_write(REFUSED);
            drop(stream);
            refused += 1;
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_warn = Some(Instant::now());
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused_total = refused,
                    "connection refused: every open connection has a request in progress"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let registered = Registered(Arc::clone(&conns), id);
        tokio::spawn(serve_connection(
            stream,
            app.clone(),
            conn,
            limits,
            stop.clone(),
            registered,
        ));
    }
}

/// Serves one connection until the client closes it, it times out idle, it is evicted, or the
/// server stops (then the request in progress finishes first).
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    conn: Arc<Conn>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    _registered: Registered,
) {
    let tracked = Arc::clone(&conn);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::new(&tracked);
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await;
            drop(busy);
            resp
        }
    });
    // Head and idle time limits are enforced below, per connection state, not by hyper.
    let http = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    // Set once the connection was told to finish: the latest it may take.
    let mut closing: Option<Instant> = None;
    loop {
        let idle_deadline = conn.arm(&limits);
        let finish = tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = sleep_until_opt(closing), if closing.is_some() => return,
            () = sleep_until_opt(idle_deadline), if closing.is_none() && idle_deadline.is_some() => {
                conn.idle_deadline(&limits).is_some_and(|d| d <= Instant::now()).then_some(CLOSE_GRACE)
            }
            () = conn.wake.notified(), if closing.is_none() => {
                conn.evicted.load(Ordering::Acquire).then_some(CLOSE_GRACE)
            }
            () = stopped(&mut stop), if closing.is_none() => {
                // The request in progress (if any) finishes; the drain deadline bounds it.
                Some(Duration::from_secs(24 * 3600))
            }
        };
        if let Some(grace) = finish {
            if conn.is_idle() && conn.served.load(Ordering::Acquire) == 0 {
                // Never completed a request head: nothing to finish, close now.
                return;
            }
            // Closes an idle keep-alive at once; lets a request in progress finish first.
            http.as_mut().graceful_shutdown();
            closing = Some(Instant::now() + grace);
        }
    }
}

/// Resolves once the stop signal is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
