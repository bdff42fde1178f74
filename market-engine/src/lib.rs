//! The Gridshare market engine: one binary per community that ingests signed meter readings
//! over MQTT, keeps accounts and meters, and serves the HTTP API.
//!
//! - [`ingest`]: the checks every reading passes, and why one is rejected;
//! - [`broker`]: the embedded MQTT broker's logins and topic access rules, meters' MQTT
//!   credentials;
//! - [`pipeline`]: MQTT subscription → checks → batched storage → acknowledgement;
//! - [`gaps`]: readings missing from a meter's sequence, asked for again from its agent;
//! - [`meters`]: registration by a household, approval by the community operator;
//! - [`autotrade`]: households' automatic trading rules;
//! - [`exchange`]: the books, funds and order ids as pure state — `apply(event)`, shared by
//!   the live path and the replay after a restart;
//! - [`market`]: the exchange behind its lock, the order log on disk, gate closure and
//!   settlement;
//! - [`chain`]: settled slots as batches through the settlement outbox (in the engine's
//!   database) to the embedded chain or a JSON-RPC node;
//! - [`prover`]: proofs of every finished epoch of the meters that made the engine their
//!   delegate, from the readings it holds;
//! - [`watch`]: the fraud watcher that reports meters signing contradictory readings;
//! - [`staking`]: a meter's stake and rewards, read from the staking contract on the chain;
//! - [`store`]: SQLite or PostgreSQL through one code path;
//! - [`api`]: the REST API, `/metrics`, `/healthz`, `/openapi.json`;
//! - [`metrics`]: every counter, exported on `/metrics`;
//! - [`tasks`]: supervision of the background tasks;
//! - [`server`]: everything wired together, with graceful shutdown;
//! - [`web`]: the neighbourhood web app, served from inside the binary at `/`.

pub mod api;
pub mod autotrade;
pub mod broker;
pub mod chain;
pub mod config;
pub mod exchange;
pub mod gaps;
pub mod ingest;
pub mod market;
pub mod meters;
pub mod metrics;
pub mod pipeline;
pub mod prover;
pub mod server;
pub mod settings;
pub mod staking;
pub mod store;
pub mod tasks;
pub mod watch;
pub mod web;
