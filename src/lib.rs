//! stackdemo: the visit counter of the Docker Swarm tutorial, made production-grade.
//!
//! `GET /` counts a visit and answers `Hello World! I have been seen N times.`; the count
//! lives in Redis (key `hits`, as the original app keeps it) or in an embedded database.
//! A request goes acceptor → worker (`server`) → router (`routes`) → batcher (`counter`)
//! → store (`store`); `deadlines` holds every time bound, `startup` puts it together.

pub mod accept;
pub mod badge;
pub mod chart;
pub mod cli;
pub mod config;
pub mod counter;
pub mod counters;
pub mod deadlines;
pub mod delivery;
pub mod healthcheck;
pub mod page;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod stats_cache;
pub mod store;
pub mod telemetry;
pub mod verify;
