//! fedslice's core library: everything a site and the aggregator must agree on.
//!
//! It owns the models ([`model`]), GMML self-supervision ([`ssl`]), training loops
//! ([`train`]), site data ([`data`]: the exam type, the synthetic knee phantom,
//! readers and preprocessing), evaluation ([`metrics`]) and strip charts of
//! results ([`plot`]); the federation's shared vocabulary: the update
//! format ([`wire`]), aggregation ([`aggregate`]), protocol messages
//! ([`protocol`]), TLS configuration ([`tls`]), site-level differential
//! privacy ([`privacy`]) and a site's round of local training ([`federated`]).
//!
//! It must not do I/O beyond the files a caller names, open network connections,
//! or log anything derived from patient headers: binaries decide where data comes
//! from and where results go.

pub mod aggregate;
pub mod atomic_file;
pub mod bench;
pub mod data;
pub mod device;
pub mod experiment;
pub mod export;
pub mod federated;
pub mod federated_study;
pub mod heartbeat;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod privacy;
#[cfg(feature = "cli")]
pub mod process;
pub mod protocol;
pub mod ssl;
#[cfg(feature = "phantom")]
pub mod study;
pub mod text;
pub mod tls;
pub mod train;
pub mod wire;
