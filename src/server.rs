//! Startup and shutdown: opens the store and the bus, starts the hub, the writer and both
//! listeners, and on the shutdown trigger drains in order: readiness fails, sockets close with
//! 1001 in waves, the writer commits what it holds, the process returns.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use crate::auth::{Auth, random_token};
use crate::bus::{Bus, LocalBus, RedisBus};
use crate::commit::GroupCommit;
use crate::config::Config;
use crate::hub::{Close, Hub, PRESENCE_REFRESH};
use crate::ids::PodId;
use crate::state::AppState;
use crate::store::{self, Store};
use crate::telemetry::Metrics;

/// `confab migrate`: apply migrations and exit.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = store::open_with(
        config.database_url.as_deref(),
        &config.data_dir,
        store::QueryTimer::default(),
        store::OpenOptions {
            max_connections: 2,
            migrate: true,
        },
    )
    .await?;
    tracing::info!(backend = store.backend(), "migrations applied");
    Ok(())
}

/// `confab serve`: bind the configured addresses and run until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    raise_open_files_limit();
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (CONFAB_LISTEN)", config.listen))?;
    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (CONFAB_METRICS_LISTEN)",
                config.metrics_listen
            )
        })?;
    run(config, listener, metrics_listener, shutdown_signal()).await
}

/// Every socket is an open file. Container runtimes often start processes with a soft limit of
/// 1024 and a far higher hard limit; a pod meant to hold many sockets raises its own soft limit
/// to the hard one, as the Go runtime does for Go servers.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(open_files = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Builds the shared state: store, secret, bus, hub and writer.
pub(crate) async fn build(
    config: Config,
) -> anyhow::Result<(AppState, tokio::task::JoinHandle<()>, Arc<Notify>)> {
    let metrics = Metrics::new();
    let store: Arc<dyn Store> = store::open_with(
        config.database_url.as_deref(),
        &config.data_dir,
        store::QueryTimer::new(metrics.store_query.clone()),
        store::OpenOptions {
            max_connections: config.database_max_connections,
            migrate: config.migrate_on_start,
        },
    )
    .await?;
    // Which webhooks want which events, for the outbox the store writes.
    store.reload_webhooks().await?;
    let secret = match &config.jwt_secret {
        Some(s) => s.clone(),
        None => store.setting_init("jwt_secret", &random_token()).await?,
    };
    let auth = Auth::new(
        secret.as_bytes(),
        config.access_token_ttl,
        config.refresh_token_ttl,
    );
    let pod = PodId::new();
    let (incoming_tx, mut incoming_rx) = mpsc::unbounded_channel();
    let bus: Arc<dyn Bus> = match &config.redis_url {
        Some(url) => {
            RedisBus::connect(url, config.redis_cluster, pod, incoming_tx, metrics.clone()).await?
        }
        None => Arc::new(LocalBus),
    };
    let hub = Hub::new(pod, store.clone(), bus.clone(), metrics.clone());
    {
        let hub = hub.clone();
        tokio::spawn(async move {
            while let Some(incoming) = incoming_rx.recv().await {
                match incoming {
                    crate::bus::Incoming::Event(env) => hub.on_bus(env),
                    crate::bus::Incoming::Disconnected => hub.bus_lost(),
                    crate::bus::Incoming::Resubscribed => {
                        let hub = hub.clone();
                        tokio::spawn(async move {
                            hub.refill_changes().await;
                            hub.resync().await;
                        });
                    }
                }
            }
        });
    }
    {
        let hub = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRESENCE_REFRESH);
            loop {
                tick.tick().await;
                let Some(hub) = hub.upgrade() else { break };
                hub.refresh_presence().await;
                hub.sweep_presence().await;
                hub.announce().await;
                hub.record_gauges();
            }
        });
    }
    let blobs = Arc::new(crate::store::blobs::Blobs::open(
        config.attachments_url.as_deref(),
        &config.data_dir,
    )?);
    {
        // The safety net for lost bus messages: compare every local room with the store.
        let hub = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::hub::RESYNC_EVERY);
            loop {
                tick.tick().await;
                let Some(hub) = hub.upgrade() else { break };
                hub.resync().await;
            }
        });
    }
    let stop = Arc::new(Notify::new());
    let (writer, writer_task) = GroupCommit::start(
        store.clone(),
        hub.clone(),
        metrics.clone(),
        config.writer_batch(),
        stop.clone(),
    );
    let admins: HashSet<String> = config
        .admins
        .iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    tracing::info!(backend = store.backend(), bus = bus.name(), %pod, "confab ready");
    let config_watch_resources = config.watch_resources;
    let policies = Arc::new(crate::policy::Policies::new(
        crate::policy::Policy::from_config(&config),
    ));
    let oidc = crate::auth::oidc::Oidc::start(&config, &metrics).await?;
    let hashing = Arc::new(crate::auth::PasswordHashing::new(
        config.password_hash_concurrency,
        config.password_hash_queue,
        Some(metrics.rate_limited.with_label_values(&["password_hash"])),
    ));
    let resumes = Arc::new(crate::resume::Resumes::new(store.clone()));
    let state = AppState {
        config: Arc::new(config),
        store,
        resumes,
        bus,
        hub,
        writer,
        auth,
        hashing,
        metrics,
        admins: Arc::new(admins),
        oidc,
        blobs,
        policies,
        slow_mode: Arc::default(),
        leader: Arc::new(AtomicBool::new(!config_watch_resources)),
        config_status: Arc::default(),
        draining: Arc::new(AtomicBool::new(false)),
        started: Instant::now(),
        shared: Arc::default(),
    };
    Ok((state, writer_task, stop))
}

/// Runs confab on the given listeners until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let drain_delay = Duration::from_secs(config.drain_delay_secs);
    let (state, writer_task, stop) = build(config).await?;
    let mut background = Vec::new();
    if let Some(dir) = state.config.config_dir.clone() {
        let resync = Duration::from_secs(state.config.config_resync_secs.max(1));
        background.push(tokio::spawn(crate::operator::config_dir::run(
            state.clone(),
            dir,
            resync,
        )));
    }
    let (operator_stop, operator_stopped) = tokio::sync::watch::channel(false);
    let mut operator = None;
    if state.config.watch_resources {
        let client = kube::Client::try_default()
            .await
            .context("CONFAB_WATCH_RESOURCES is set but no Kubernetes API is reachable (in-cluster config or KUBECONFIG)")?;
        let lease_ns = state.config.lease_namespace.clone();
        operator = Some(tokio::spawn(crate::operator::controller::run(
            state.clone(),
            client,
            lease_ns,
            operator_stopped,
        )));
    }
    {
        // Keeps confab_ready current even when nothing probes the pod.
        let state = state.clone();
        background.push(tokio::spawn(async move {
            loop {
                crate::http::ops::readiness(&state).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }
    // Webhooks: the delivery worker and the backlog gauges, on every pod.
    background.push(tokio::spawn(
        crate::webhooks::Worker::new(state.clone())?.run(),
    ));
    background.push(tokio::spawn(crate::webhooks::watch_backlog(state.clone())));
    let retention_every = Duration::from_secs(state.config.retention_interval_secs.max(1));
    background.push(tokio::spawn(crate::operator::retention(
        state.clone(),
        retention_every,
    )));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, metrics = %metrics_listener.local_addr()?, "listening");

    let metrics_app = crate::app::metrics_router(state.metrics.clone());
    let metrics_server = tokio::spawn(async move {
        let _ = axum::serve(metrics_listener, metrics_app).await;
    });

    let app = crate::app::router(state.clone());
    let http_stop = Arc::new(Notify::new());
    let http_stopped = http_stop.clone();
    let header_timeout = Duration::from_millis(state.config.http_header_timeout_ms);
    let server = tokio::spawn(serve_http(
        listener,
        app,
        header_timeout,
        state.metrics.clone(),
        http_stopped,
    ));

    shutdown.await;
    tracing::info!("shutting down: readiness off, draining");
    state.draining.store(true, Ordering::SeqCst);
    if let Some(task) = operator {
        // Hand the Lease over before the pod goes.
        let _ = operator_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    tokio::time::sleep(drain_delay).await;
    state
        .hub
        .close_all(
            Close::DRAINING,
            200,
            Duration::from_millis(50),
            Duration::from_secs(10),
        )
        .await;
    http_stop.notify_one();
    stop.notify_one();
    drop(state);
    let _ = writer_task.await;
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("requests still open after 5 s; shutting down anyway");
    }
    metrics_server.abort();
    for task in background {
        task.abort();
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Serves HTTP/1.1 and WebSocket upgrades on `listener` until `stop` is notified, then lets the
/// requests in progress finish. A client gets `header_timeout` to send a request's complete
/// headers, and an idle keep-alive connection as long for its next request: slow or silent
/// clients cannot hold connections (and file descriptors) open; each one cut off is counted.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    metrics: crate::telemetry::Metrics,
    stop: Arc<Notify>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let (shutdown, watch) = tokio::sync::watch::channel(false);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, for instance: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.notified() => break,
        };
        // No Nagle: a chat frame is small and must leave at once, not wait for the client to
        // acknowledge the previous one (with delayed acks, up to tens of milliseconds).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = app.clone().map_request(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                req
            },
        );
        let mut watch = watch.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = http
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => {
                    if served.is_err_and(|e| e.is_timeout()) {
                        metrics.http_header_timeouts.inc();
                    }
                    return;
                }
                _ = watch.changed() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    drop(watch);
    let _ = shutdown.send(true);
    // Every connection task holds a receiver: this returns when the last one has ended.
    shutdown.closed().await;
}
