//! The engine wired together: database, key registry, embedded broker, ingest, HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api::auth::Auth;
use crate::api::{AppState, RateLimits, router};
use crate::broker::{BrokerAuthMetrics, EmbeddedBroker};
use crate::chain::ChainSettler;
use crate::config::EngineConfig;
use crate::gaps::{Requester, ResendLink};
use crate::ingest::{Checker, IngestMetrics, KeyRegistry};
use crate::market::Market;
use crate::metrics::ChainMetrics;
use crate::pipeline::{self, Subscription};
use crate::store::{Store, StoreError};
use crate::tasks::{TaskMetrics, supervise};
use std::sync::atomic::Ordering;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The embedded broker or the broker URL.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// The market settings or the order log.
    #[error("market: {0}")]
    Market(String),
    /// The chain settler could not open (its settings, the node, the custody secret).
    #[error("chain: {0}")]
    Chain(#[from] crate::chain::SettlerError),
    /// The database opens but cannot be written (read-only, full disk): the engine stores
    /// every reading and order before it answers, so it does not start on it.
    #[error(
        "database {url}: cannot write to it ({reason}); the engine does not start on a \
         database it cannot write (make it writable, free disk space, or point \
         [database] url at another)"
    )]
    Unwritable {
        /// The database URL.
        url: String,
        /// What the write said.
        reason: String,
    },
}

/// A running engine.
pub struct Engine {
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    /// Ingest counters.
    pub ingest: Arc<IngestMetrics>,
    /// The database.
    pub store: Store,
    /// Registered keys.
    pub keys: KeyRegistry,
    /// The market.
    pub market: Arc<Market>,
    /// The login guard and its counters.
    pub auth: Arc<Auth>,
    /// The embedded broker, if the engine runs one.
    pub broker: Option<EmbeddedBroker>,
    /// Logins and access-rule denials at the embedded broker.
    pub broker_auth: Arc<BrokerAuthMetrics>,
    /// Restarts of the background tasks, and the task given up, if any.
    pub task_metrics: Arc<TaskMetrics>,
    /// The chain settlement and its fraud watcher's target, if a chain is configured.
    pub settler: Option<Arc<ChainSettler>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Engine {
    /// Starts everything; returns once the HTTP API listens and the ingest runs.
    pub async fn start(config: &EngineConfig) -> Result<Self, ServeError> {
        let store = Store::open(&config.database.url).await?;
        if let Err(e) = store.probe_write().await {
            store.close().await;
            return Err(ServeError::Unwritable {
                url: config.database.url.clone(),
                reason: e.to_string(),
            });
        }
        // Tokens issued before they expired get the default lifetime from now.
        let token_ms = u64::from(config.auth.token_days) * 86_400_000;
        store
            .expire_unbounded_credentials(pipeline::now_ms() + token_ms)
            .await?;
        let keys = crate::meters::load_registry(&store).await?;
        let (shutdown, stopped) = watch::channel(false);
        let broker_auth = Arc::new(BrokerAuthMetrics::default());
        let task_metrics = Arc::new(TaskMetrics::default());
        let mut tasks = Vec::new();
        let client_id = format!("market-engine-{}", config.community);
        let filter =
            gridshare_core::mqtt::readings_filter(&config.mqtt.topic_prefix, &config.community);
        let resend = Arc::new(ResendLink::default());
        let (broker, subscription) = if config.mqtt.embedded_listen.is_empty() {
            let url = gridshare_core::mqtt::BrokerUrl::parse(&config.mqtt.url)
                .map_err(|e| ServeError::Mqtt(format!("mqtt.url {e}")))?;
            let tls = if url.tls {
                Some(
                    gridshare_mqtt::tls_config(config.mqtt.ca_file.as_deref())
                        .map_err(|e| ServeError::Mqtt(e.to_string()))?,
                )
            } else {
                None
            };
            let subscription = Subscription {
                host: url.host,
                port: url.port,
                tls,
                credentials: config
                    .mqtt
                    .username
                    .clone()
                    .map(|u| (u, config.mqtt.password.clone().unwrap_or_default())),
                client_id,
                filter,
                resend: resend.clone(),
            };
            (None, subscription)
        } else {
            let addr: SocketAddr = config
                .mqtt
                .embedded_listen
                .parse()
                .map_err(|e| ServeError::Mqtt(format!("mqtt.embedded_listen: {e}")))?;
            let (broker, broker_tasks) = EmbeddedBroker::start(
                addr,
                store.clone(),
                &config.mqtt.topic_prefix,
                &config.community,
                broker_auth.clone(),
                stopped.clone(),
            )
            .await
            .map_err(|e| ServeError::Mqtt(e.to_string()))?;
            tasks.extend(broker_tasks);
            // The engine reads from rumqttd's loopback port directly: its own readings never
            // pass through the gate.
            let subscription = Subscription {
                host: broker.internal.ip().to_string(),
                port: broker.internal.port(),
                tls: None,
                credentials: Some(broker.engine_login()),
                client_id,
                filter,
                resend: resend.clone(),
            };
            (Some(broker), subscription)
        };
        // The fraud watcher connects as the engine does, under a client id of its own.
        let watch_subscription = subscription.clone();
        let ingest = Arc::new(IngestMetrics::default());
        let community = config.market.community().map_err(ServeError::Market)?;
        let market = Arc::new(
            Market::open_with(config.market.clone(), community, store.clone())
                .await
                .map_err(|e| ServeError::Market(e.to_string()))?,
        );
        market.wait_for_late_readings(config.ingest.late_readings_wait_s);
        let live = market.live();
        let checker = Checker {
            registry: keys.clone(),
            max_future_skew_ms: config.ingest.max_future_skew_ms,
            max_age_ms: config.ingest.max_age_ms,
        };
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let chain_metrics = Arc::new(ChainMetrics::default());
        let mut subscribed_tx = Some(subscribed_tx);
        tasks.push({
            let (store, ingest, live, stopped) =
                (store.clone(), ingest.clone(), live.clone(), stopped.clone());
            supervise("ingest", task_metrics.clone(), stopped.clone(), move || {
                // After a restart nobody waits for the subscription any more.
                let subscribed = subscribed_tx
                    .take()
                    .unwrap_or_else(|| tokio::sync::oneshot::channel().0);
                pipeline::run(
                    subscription.clone(),
                    checker.clone(),
                    store.clone(),
                    ingest.clone(),
                    live.clone(),
                    stopped.clone(),
                    subscribed,
                )
            })
        });
        tasks.push({
            let requester = Requester {
                store: store.clone(),
                link: resend,
                prefix: config.mqtt.topic_prefix.clone(),
                community: config.community.clone(),
                give_up_after_ms: config.ingest.gap_give_up_after_s.saturating_mul(1000),
                metrics: ingest.clone(),
            };
            let stop = shutdown.subscribe();
            supervise("gaps", task_metrics.clone(), stop.clone(), move || {
                crate::gaps::run(requester.clone(), stop.clone())
            })
        });
        tasks.push({
            let (live, stop) = (live.clone(), shutdown.subscribe());
            supervise(
                "neighbourhood",
                task_metrics.clone(),
                stop.clone(),
                move || pipeline::neighbourhood(live.clone(), stop.clone()),
            )
        });
        // Readings published before the subscription exists would be lost by the broker, so
        // the engine reports "running" only once it is subscribed (or says why not).
        if tokio::time::timeout(std::time::Duration::from_secs(10), subscribed)
            .await
            .is_err()
        {
            tracing::warn!(target: "ingest", url = %config.mqtt.url, "not yet subscribed to the broker; readings are taken in as soon as it answers");
        }
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: config.http.listen,
                source,
            })?;
        let http = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: config.http.listen,
            source,
        })?;
        tasks.push({
            let (store, stop) = (store.clone(), shutdown.subscribe());
            let keep_days = config.ingest.rejections_kept_days;
            supervise("retention", task_metrics.clone(), stop.clone(), move || {
                pipeline::expire_rejections(store.clone(), keep_days, stop.clone())
            })
        });
        tasks.push({
            let (market, stop) = (market.clone(), shutdown.subscribe());
            supervise("schedule", task_metrics.clone(), stop.clone(), move || {
                schedule(market.clone(), stop.clone())
            })
        });
        tasks.push({
            let (market, store, stop) = (market.clone(), store.clone(), shutdown.subscribe());
            supervise("autotrade", task_metrics.clone(), stop.clone(), move || {
                crate::autotrade::run(market.clone(), store.clone(), stop.clone())
            })
        });
        let settler = ChainSettler::open(&config.chain, store.clone())
            .await?
            .map(Arc::new);
        if let Some(settler) = settler.clone() {
            market.queue_batches(settler.custody().clone());
            let (market, store, metrics, stop) = (
                market.clone(),
                store.clone(),
                chain_metrics.clone(),
                shutdown.subscribe(),
            );
            tasks.push(supervise(
                "chain",
                task_metrics.clone(),
                stop.clone(),
                move || {
                    settle_on_chain(
                        market.clone(),
                        store.clone(),
                        settler.clone(),
                        metrics.clone(),
                        stop.clone(),
                    )
                },
            ));
        }
        if let Some(settler) = settler.clone().filter(|_| config.chain.prove) {
            let settings = crate::prover::ProverSettings {
                after_s: config.chain.prove_after_s,
                retry_s: config.chain.prove_retry_s,
            };
            let (store, metrics, stop) =
                (store.clone(), chain_metrics.clone(), shutdown.subscribe());
            tasks.push(supervise(
                "prover",
                task_metrics.clone(),
                stop.clone(),
                move || {
                    crate::prover::run(
                        settler.clone(),
                        store.clone(),
                        settings,
                        metrics.clone(),
                        stop.clone(),
                    )
                },
            ));
        }
        if let Some(target) = settler.as_ref().and_then(|s| s.watch_target()).cloned() {
            let source = gridshare_operator::watcher::MqttSource {
                host: watch_subscription.host.clone(),
                port: watch_subscription.port,
                prefix: config.mqtt.topic_prefix.clone(),
                community: config.community.clone(),
                client_id: format!("{}-watcher", watch_subscription.client_id),
                credentials: watch_subscription.credentials.clone(),
                tls: watch_subscription.tls.clone(),
            };
            let (metrics, stop) = (chain_metrics.clone(), shutdown.subscribe());
            tasks.push(supervise(
                "watcher",
                task_metrics.clone(),
                stop.clone(),
                move || {
                    crate::watch::run(
                        target.clone(),
                        source.clone(),
                        metrics.clone(),
                        stop.clone(),
                    )
                },
            ));
        }
        let auth = Arc::new(Auth::new(config.auth.clone()));
        let app = router(AppState {
            store: store.clone(),
            keys: keys.clone(),
            ingest: ingest.clone(),
            market: market.clone(),
            limits: Arc::new(RateLimits::new(
                f64::from(config.http.orders_per_second),
                f64::from(config.http.orders_burst),
            )),
            meters_per_account: config.http.meters_per_account,
            tasks: task_metrics.clone(),
            chain: chain_metrics,
            settler: settler.clone(),
            broker_auth: broker_auth.clone(),
            auth: auth.clone(),
        });
        // "Should I join?" simulates households in a shipped neighbourhood: parse those once
        // now, off the request path, so that the first answer does not wait for it.
        drop(tokio::task::spawn_blocking(|| {
            if let Err(e) = gridshare_simulations::roi::Neighbourhood::parse_shipped() {
                tracing::error!(target: "api", "roi: shipped neighbourhoods: {e}");
            }
        }));
        let mut http_stop = stopped;
        tasks.push(tokio::spawn(async move {
            // The peer's address feeds the per-address login limit.
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            });
            if let Err(e) = serve.await {
                tracing::error!(target: "api", "http server: {e}");
            }
        }));
        tracing::info!(target: "engine", %http, community = %config.community, "market engine running");
        Ok(Self {
            market,
            http,
            broker,
            broker_auth,
            ingest,
            store,
            keys,
            auth,
            task_metrics,
            settler,
            shutdown,
            tasks,
        })
    }

    /// Stops the ingest (after storing and acknowledging what it holds) and the HTTP API,
    /// in bounded time: a task still busy after [`STOP_GRACE`] (storage that hangs) is
    /// aborted, and what it had not stored stays unacknowledged at the broker for the next run.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(target: "engine", "a background task did not stop in time; aborted");
                task.abort();
            }
        }
        if tokio::time::timeout(STOP_GRACE, self.store.close())
            .await
            .is_err()
        {
            tracing::warn!(target: "engine", "the database did not close in time");
        }
    }
}

/// How long [`Engine::stop`] waits for the background tasks, and then for the database.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Drives the slot timeline on wall-clock time: closes gates and settles delivered slots.
async fn schedule(market: Arc<Market>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = i64::try_from(crate::pipeline::now_ms() / 1000).unwrap_or(i64::MAX);
        if let Err(e) = market.close_due_gates(now).await {
            tracing::error!(target: "market", "gate closure failed (retrying): {e}");
        }
        if let Err(e) = market.close_quiet_slots(now).await {
            tracing::error!(target: "market", "closing slots without orders failed (retrying): {e}");
        }
        if let Err(e) = market.settle_due(now).await {
            tracing::error!(target: "market", "settlement failed (retrying): {e}");
        }
        if let Err(e) = market.derive_addresses().await {
            tracing::error!(target: "market", "deriving new accounts' chain addresses failed (retrying): {e}");
        }
    }
}

/// Drives the settlement outbox to the chain (and queues settled slots that have no batch
/// yet); runs apart from the scheduler so a slow or unreachable chain never delays gate
/// closures or settlement.
async fn settle_on_chain(
    market: Arc<Market>,
    store: Store,
    settler: Arc<ChainSettler>,
    metrics: Arc<ChainMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match market.queue_unqueued().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target: "chain", slots = n, "settled slots queued for the chain")
            }
            Err(e) => tracing::error!(target: "chain", "settled slots not queued: {e}"),
        }
        let money = settler.money_step(&market, crate::pipeline::now_ms()).await;
        metrics
            .deposits_mirrored
            .fetch_add(money.mirrored, Ordering::Relaxed);
        metrics
            .deposit_mirror_failures
            .fetch_add(money.mirror_failures, Ordering::Relaxed);
        if let Some(f) = money.follow {
            metrics.money_events.fetch_add(f.applied, Ordering::Relaxed);
            metrics
                .followed_block
                .store(f.through_block, Ordering::Relaxed);
            metrics.follow_behind.store(f.behind, Ordering::Relaxed);
        }
        if money.follow_error.is_some() {
            metrics.follow_failures.fetch_add(1, Ordering::Relaxed);
        }
        match settler.step(crate::pipeline::now_ms()).await {
            Ok(progress) => {
                metrics
                    .confirmed
                    .fetch_add(progress.confirmed, Ordering::Relaxed);
                metrics
                    .fell_back
                    .fetch_add(progress.fell_back, Ordering::Relaxed);
                metrics
                    .refusals
                    .fetch_add(progress.rejected, Ordering::Relaxed);
                metrics
                    .accounts_opened
                    .fetch_add(progress.accounts_opened, Ordering::Relaxed);
                metrics
                    .account_open_failures
                    .fetch_add(progress.account_open_failures, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "chain", "settlement outbox: {e}");
            }
        }
        match store.open_settlement_batches().await {
            Ok(open) => {
                let count = |f: &dyn Fn(&crate::store::settlement::BatchRecord) -> bool| {
                    u64::try_from(open.iter().filter(|r| f(r)).count()).unwrap_or(u64::MAX)
                };
                metrics
                    .outbox_depth
                    .store(count(&|_| true), Ordering::Relaxed);
                metrics.rejected.store(
                    count(&|r| r.status == crate::store::settlement::BatchStatus::Rejected),
                    Ordering::Relaxed,
                );
            }
            Err(e) => tracing::warn!(target: "chain", "outbox depth unknown: {e}"),
        }
    }
}
