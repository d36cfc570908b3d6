//! The aggregator: the consortium's hosted service. It owns enrolment (the
//! consortium CA and site registry), durable state (SQLite + content-addressed
//! blobs), the round engine (FedAvg and its robust variants) and the mutual-TLS
//! HTTPS API the site agents poll.
//!
//! It must never need or receive pixels, headers or identifiers: it works on
//! model tensors, sample counts and aggregate metrics only, and it never hands
//! one site's update to another site.

pub mod backup;
pub mod blobs;
pub mod cli;
pub mod crash_points;
pub mod engine;
pub mod enrol;
pub mod export;
mod intake;
pub mod job_control;
pub mod ledger;
pub mod limits;
pub mod operator;
pub mod pki;
pub mod refusals;
pub mod report;
pub mod retention;
pub mod schema;
pub mod server;
mod server_opt;
pub mod state;
pub mod status_page;
mod uploads;
