//! `run`: serve a router on a listener until `shutdown` resolves, then drain:
//! readiness goes 503 (for `drain_delay`), the listener closes, in-flight
//! requests and streams get `grace` to finish.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::service::Lifecycle;

#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub delay: Duration,
    pub grace: Duration,
}

/// Returns `Ok(true)` when every in-flight request finished within the grace
/// period, `Ok(false)` when the grace period cut some off.
pub async fn run(
    listener: TcpListener,
    app: axum::Router,
    lifecycle: Arc<Lifecycle>,
    drain: Drain,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let mut server = tokio::spawn(server.into_future());
    lifecycle.mark_ready();

    tokio::select! {
        result = &mut server => return result.map_err(std::io::Error::other)?.map(|()| true),
        () = shutdown => {}
    }
    lifecycle.start_draining();
    tracing::info!(drain_delay_ms = drain.delay.as_millis() as u64, "shutdown requested; readiness is now 503");
    tokio::time::sleep(drain.delay).await;
    let _ = stop_tx.send(());
    tracing::info!(grace_ms = drain.grace.as_millis() as u64, "listener closed; waiting for in-flight requests");
    match tokio::time::timeout(drain.grace, &mut server).await {
        Ok(result) => {
            result.map_err(std::io::Error::other)??;
            tracing::info!("all in-flight requests finished");
            Ok(true)
        }
        Err(_) => {
            server.abort();
            tracing::warn!("grace period over; remaining requests were cut off");
            Ok(false)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
