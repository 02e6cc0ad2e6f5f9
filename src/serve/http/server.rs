//! Serving on a socket with graceful shutdown: on the shutdown signal the listener stops
//! accepting, in-flight requests get `shutdown_timeout` to finish, then `serve` returns.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{AppState, router};

/// Serves `state` on `listener` until `shutdown` resolves, then drains for at most
/// `drain_timeout`. Returns `Ok(true)` when every connection finished in time.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<bool> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let app = router(state);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        // Resolves once the signal below has fired (or the sender is gone).
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        res = &mut server => return res.map_err(std::io::Error::other)?.map(|()| true),
        () = shutdown => {}
    }
    tracing::info!(
        ?drain_timeout,
        "shutting down: no new connections, draining in-flight requests"
    );
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(res) => res.map_err(std::io::Error::other)?.map(|()| true),
        Err(_) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
            server.abort();
            Ok(false)
        }
    }
}
