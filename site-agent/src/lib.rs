//! The site agent: the program a hospital installs. It owns the site's side of
//! federation: its configuration and TLS bundle, reading its exams, local
//! training rounds, the outbound-only HTTPS client, and the log of every
//! payload sent.
//!
//! It must never send pixels, headers or identifiers off the site: the only
//! things it uploads are model deltas, sample counts and aggregate metrics, and
//! the training agent never opens a listening port. The inference services
//! (`predict`, and the listeners built on it such as `dicom-node`, which does
//! open a DICOM port inside the hospital) run an exported bundle inside the
//! hospital and send nothing to the consortium.

pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod credentials;
pub mod dicom_node;
pub mod heartbeat;
pub mod inspect;
pub mod payload_log;
pub mod predict;
pub mod progress;
pub mod run;
pub mod serve_model;
pub mod site_data;
