//! `run`: serve a router on a listener until `shutdown` resolves, then drain:
//! readiness goes 503 (for `drain_delay`), the listener closes, in-flight
//! requests and streams get `grace` to finish.
//!
//! Connections are served with hyper's HTTP/1.1 server directly rather than
//! `axum::serve`, which exposes none of these limits:
//! - the request head (request line and headers) is at most
//!   `max_header_bytes`: hyper answers 431 and closes the connection;
//! - the head must arrive within `header_read_timeout`, counted whenever the
//!   connection waits for a request (a new or idle keep-alive connection
//!   included), and a TLS handshake must finish within it too: slowloris
//!   clients are disconnected;
//! - with `tls`, the port speaks HTTPS only and every response carries
//!   `Strict-Transport-Security`.
//!
//! HTTP/1.1 only: hyper's HTTP/2 server has no head read timeout, so one
//! slow HTTP/2 client could hold a connection indefinitely.
//!
//! The accept loop runs on the shared runtime and deals connections round
//! robin to the serving cores (`crate::runtime`), each of which runs its
//! connections to the end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::runtime::Cores;
use crate::service::Lifecycle;
use crate::tls::TlsError;

#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub delay: Duration,
    pub grace: Duration,
}

/// Per-connection protocol limits and TLS, from `server.*`.
#[derive(Clone)]
pub struct Http {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub tls: Option<TlsAcceptor>,
    /// Serving threads (`server.workers`, 0 resolved to one per CPU).
    pub workers: usize,
}

/// A year, subdomains included: the value recommended once HTTPS is settled.
const HSTS: &str = "max-age=31536000; includeSubDomains";

impl Http {
    /// Reads and checks the TLS files when `server.tls` is set.
    pub fn from_config(server: &ServerConfig) -> Result<Self, TlsError> {
        Ok(Self {
            max_header_bytes: server.max_header_bytes,
            header_read_timeout: server.header_read_timeout,
            tls: crate::tls::server_config(&server.tls)?.map(TlsAcceptor::from),
            workers: if server.workers == 0 { crate::runtime::default_cores() } else { server.workers },
        })
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Returns `Ok(true)` when every in-flight request finished within the grace
/// period, `Ok(false)` when the grace period cut some off.
pub async fn run(
    listener: TcpListener,
    app: axum::Router,
    lifecycle: Arc<Lifecycle>,
    drain: Drain,
    http: Http,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    run_with_ops(listener, app, None, lifecycle, drain, http, shutdown).await
}

/// The operations port (`server.ops_port`): its listener and routes.
pub struct Ops {
    pub listener: TcpListener,
    pub app: axum::Router,
}

/// How long the operations port's last scrape or probe may take once the API
/// port has drained.
const OPS_CLOSE: Duration = Duration::from_secs(2);

/// `run`, with the operations port served beside the API port: plain HTTP,
/// the same head limits, open through the drain (so that probes see
/// readiness turn 503 and Prometheus can scrape to the end), closed after.
pub async fn run_with_ops(
    listener: TcpListener,
    app: axum::Router,
    ops: Option<Ops>,
    lifecycle: Arc<Lifecycle>,
    drain: Drain,
    http: Http,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ops_stop_tx, ops_stop_rx) = watch::channel(false);
    let cores = Arc::new(Cores::start(http.workers)?);
    let ops = ops.map(|ops| {
        let plain = Http { tls: None, ..http.clone() };
        tokio::spawn(accept_loop(ops.listener, ops.app, Arc::new(plain), cores.clone(), ops_stop_rx))
    });
    let mut server = tokio::spawn(accept_loop(listener, app, Arc::new(http), cores.clone(), stop_rx));
    lifecycle.mark_ready();
    let result = drain_on(shutdown, &mut server, &lifecycle, &stop_tx, drain).await;
    let _ = ops_stop_tx.send(true);
    if let Some(mut ops) = ops
        && tokio::time::timeout(OPS_CLOSE, &mut ops).await.is_err()
    {
        ops.abort();
    }
    // Whatever the connections left running (nothing, unless the grace
    // period cut them off) ends with the cores.
    cores.stop().await;
    result
}

async fn drain_on(
    shutdown: impl Future<Output = ()>,
    server: &mut tokio::task::JoinHandle<()>,
    lifecycle: &Lifecycle,
    stop_tx: &watch::Sender<bool>,
    drain: Drain,
) -> std::io::Result<bool> {
    tokio::select! {
        result = &mut *server => return result.map_err(std::io::Error::other).map(|()| true),
        () = shutdown => {}
    }
    lifecycle.start_draining();
    tracing::info!(drain_delay_ms = drain.delay.as_millis() as u64, "shutdown requested; readiness is now 503");
    tokio::time::sleep(drain.delay).await;
    let _ = stop_tx.send(true);
    tracing::info!(grace_ms = drain.grace.as_millis() as u64, "listener closed; waiting for in-flight requests");
    match tokio::time::timeout(drain.grace, &mut *server).await {
        Ok(result) => {
            result.map_err(std::io::Error::other)?;
            tracing::info!("all in-flight requests finished");
            Ok(true)
        }
        Err(_) => {
            // Dropping the accept loop drops its `JoinSet`, which aborts every connection.
            server.abort();
            tracing::warn!("grace period over; remaining requests were cut off");
            Ok(false)
        }
    }
}

/// Accepts until `stop`, then closes the listener and waits for the
/// connections, each of which finishes its current request and closes.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    http: Arc<Http>,
    cores: Arc<Cores>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // Handed over as a std socket: the core registers it with its
                // own I/O driver, so readiness never goes through this thread.
                Ok((tcp, remote)) => match tcp.into_std() {
                    Ok(tcp) => {
                        let conn = connection(tcp, remote, app.clone(), http.clone(), stop.clone());
                        connections.spawn_on(conn, cores.next());
                    }
                    Err(e) => tracing::debug!(error = %e, "accepted connection lost before hand-over"),
                },
                Err(e) => accept_failed(&e).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once `run` asks to stop (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// As `axum::serve` does: a client that went away is no reason to pause; any
/// other error (out of file descriptors) is, briefly, so the loop does not spin.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        tracing::error!(error = %e, "accept failed; pausing for a second");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn connection(
    tcp: std::net::TcpStream,
    remote: SocketAddr,
    app: axum::Router,
    http: Arc<Http>,
    stop: watch::Receiver<bool>,
) {
    let tcp = match TcpStream::from_std(tcp) {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::debug!(error = %e, "cannot register an accepted connection");
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let hsts = http.tls.is_some();
    let service = app
        .map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            req
        })
        .map_response(move |mut resp: Response<axum::body::Body>| {
            if hsts {
                resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
            }
            resp
        });
    let service = TowerToHyperService::new(service);
    match &http.tls {
        None => serve(TokioIo::new(tcp), service, &http, stop).await,
        Some(acceptor) => match tokio::time::timeout(http.header_read_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => serve(TokioIo::new(tls), service, &http, stop).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        },
    }
}

async fn serve<I, S>(io: I, service: S, http: &Http, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<axum::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout)
        .max_header_size(http.max_header_bytes);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            // Finish the request in flight (if any), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Slow or malformed clients end here; their requests never reached a handler.
        tracing::debug!(error = %e, "connection closed with an error");
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: call it before announcing
/// that the server listens, or a SIGTERM sent right after the announcement
/// would find the default action (the process killed, nothing drained or
/// flushed). Call within the runtime.
#[cfg(unix)]
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let streams = [SignalKind::interrupt(), SignalKind::terminate()].map(|kind| signal(kind).ok());
    async move {
        let [interrupt, terminate] = streams;
        tokio::select! {
            () = received(interrupt) => {}
            () = received(terminate) => {}
        }
    }
}

/// The next delivery of a signal `signal()` listens for (never, for one
/// whose handler could not be installed).
#[cfg(unix)]
async fn received(stream: Option<tokio::signal::unix::Signal>) {
    match stream {
        Some(mut s) => drop(s.recv().await),
        None => std::future::pending::<()>().await,
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The URL `squad probe` checks: this server's health route on the address
/// it listens on, over loopback when it listens on every address, and HTTPS
/// when it terminates TLS. `Err` when the port is 0 (chosen at start-up:
/// the probe cannot know it).
pub fn probe_url(server: &crate::config::ServerConfig, ready: bool) -> Result<String, String> {
    if server.port == 0 {
        return Err("server.port is 0 (a port chosen at start-up): pass --url".into());
    }
    let host = match server.bind.trim_start_matches('[').trim_end_matches(']') {
        "" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" => "[::1]".to_owned(),
        ip if ip.contains(':') => format!("[{ip}]"),
        host => host.to_owned(),
    };
    let scheme = if server.tls.enabled() { "https" } else { "http" };
    let route = if ready { "/health/ready" } else { "/health/live" };
    Ok(format!("{scheme}://{host}:{}{route}", server.port))
}

#[cfg(test)]
mod probe_tests {
    use super::probe_url;
    use crate::config::ServerConfig;

    #[test]
    fn the_probe_reaches_the_listening_address_over_loopback_when_it_is_every_address() {
        let url = |bind: &str, port: u16, tls: bool, ready: bool| {
            let mut server = ServerConfig { bind: bind.into(), port, ..ServerConfig::default() };
            if tls {
                server.tls.cert_file = Some("c.pem".into());
                server.tls.key_file = Some("k.pem".into());
            }
            probe_url(&server, ready)
        };
        assert_eq!(url("0.0.0.0", 8000, false, false).unwrap(), "http://127.0.0.1:8000/health/live");
        assert_eq!(url("::", 8000, false, true).unwrap(), "http://[::1]:8000/health/ready");
        assert_eq!(url("[::]", 8000, false, false).unwrap(), "http://[::1]:8000/health/live");
        assert_eq!(url("10.1.2.3", 9000, true, true).unwrap(), "https://10.1.2.3:9000/health/ready");
        assert_eq!(url("fd00::7", 9000, false, false).unwrap(), "http://[fd00::7]:9000/health/live");
        assert_eq!(url("localhost", 8080, false, false).unwrap(), "http://localhost:8080/health/live");
        assert!(url("0.0.0.0", 0, false, false).unwrap_err().contains("--url"));
    }
}
