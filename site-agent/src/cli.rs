//! Every `site-agent` subcommand and flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "site-agent",
    version,
    about = "fedslice site agent: trains on this hospital's knee MRI and sends only model updates"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines as `text` or `json` (one object per line, for log shippers).
    #[arg(long, global = true, default_value = "text")]
    pub log_format: fedslice::process::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the compute backends and model presets this build supports, and check the device.
    Info {
        /// Device to check: flex (CPU) or wgpu (GPU).
        #[arg(long, default_value = "flex")]
        device: String,
    },
    /// List every exam in a data folder (MRNet, DICOM or NIfTI) and every file that cannot be used, with the reason.
    Inspect {
        #[arg(long)]
        data: PathBuf,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The plane exams are judged on: sagittal, coronal or axial.
        #[arg(long, default_value = "sagittal")]
        plane: fedslice::data::plane::Plane,
    },
    /// Run an exported classifier bundle on one exam: a DICOM series or study folder, a NIfTI file or an MRNet .npy.
    Predict {
        /// The bundle folder (`aggregator export` / `fedslice export`).
        #[arg(long)]
        model: PathBuf,
        /// The exam: DICOM folder (series or whole study; the model's plane is picked), .nii[.gz] or .npy.
        #[arg(long)]
        input: PathBuf,
        /// Write the JSON result here instead of standard output.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write a DICOM Comprehensive SR here (DICOM input only).
        #[arg(long)]
        sr: Option<PathBuf>,
        #[arg(long, default_value = "flex")]
        device: String,
    },
    /// Serve a classifier bundle over HTTP(S) inside the hospital: POST /v1/predict (multipart DICOM, tar, zip or one DICOM file), GET /health, GET /v1/model.
    /// Loopback only unless TLS and a token or client certificates are set up (see README, "Serving the model safely").
    ServeModel {
        #[arg(long)]
        model: PathBuf,
        /// Address to listen on. An address other machines can reach needs --tls-cert/--tls-key and
        /// --token-file or --client-ca (or --insecure-no-auth).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Largest request body accepted, in MiB (one series rarely needs more than a few tens).
        #[arg(long, default_value_t = 64)]
        max_body_mb: usize,
        #[arg(long, default_value = "flex")]
        device: String,
        /// File whose first line is the token callers must send as `Authorization: Bearer <token>`
        /// (at least 16 printable ASCII characters; /health needs none).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// PEM certificate chain: serve HTTPS instead of HTTP.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// PEM CA certificate(s): clients must present a certificate issued by one of them.
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// Serve an address other machines can reach without TLS and authentication anyway.
        #[arg(long)]
        insecure_no_auth: bool,
        /// Prediction requests handled at once; more are answered 503 with Retry-After.
        #[arg(long, default_value_t = 4)]
        max_concurrent: usize,
        /// Seconds a prediction request may take, upload and inference together; then 408.
        #[arg(long, default_value = "120", value_parser = crate::dicom_node::parse_quiet_period)]
        request_timeout: Duration,
    },
    /// Run a DICOM node (C-STORE / C-ECHO SCP) that classifies each MR series a PACS or router sends it,
    /// writing result.json and a Comprehensive SR beside the series and optionally sending the SR on.
    DicomNode {
        /// The bundle folder (`aggregator export` / `fedslice export`).
        #[arg(long)]
        model: PathBuf,
        /// This node's AE title; associations calling another title are rejected.
        #[arg(long)]
        ae_title: String,
        /// TCP port to listen on (104 and 11112 are the usual DICOM ports).
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "0.0.0.0")]
        listen_host: String,
        /// Where received series, results and reports are kept.
        #[arg(long, default_value = "dicom-node-storage")]
        storage: PathBuf,
        /// Seconds without a new instance after which a series counts as complete.
        #[arg(long, default_value = "10", value_parser = crate::dicom_node::parse_quiet_period)]
        quiet_period: Duration,
        /// Send each SR here with C-STORE: AE@HOST:PORT.
        #[arg(long)]
        destination: Option<crate::dicom_node::Destination>,
        #[arg(long, default_value = "flex")]
        device: String,
        /// Associations served at once; more are rejected (transient, local limit exceeded).
        #[arg(long, default_value_t = 8)]
        max_associations: usize,
        /// Largest PDU this node accepts, in bytes.
        #[arg(long, default_value_t = 65536)]
        max_pdu: u32,
    },
    /// Preflight before the first start: config, key and certificate, the consortium CA,
    /// the aggregator (reachable, TLS, enrolment), data, cache space and device.
    /// One PASS/FAIL line per check with the fix; exits non-zero if any failed.
    Check {
        /// The site.toml from the site bundle.
        #[arg(long)]
        config: PathBuf,
        /// Use this cache folder instead of site.toml's cache_dir (as `run --cache-dir`).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Join the consortium: wait for work, train locally, upload updates.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Use this cache folder instead of site.toml's cache_dir: the systemd unit points it
        /// at its CacheDirectory= (/var/cache), keeping image-derived data out of /etc.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Exit when the aggregator has no open jobs (for demos and tests).
        #[arg(long)]
        until_idle: bool,
        /// Seconds each long-poll for work may wait.
        #[arg(long, default_value_t = 25)]
        poll_wait: u64,
    },
}

pub fn main() -> std::process::ExitCode {
    dispatch(Cli::parse())
}

/// Runs the CLI on explicit arguments (the `fedslice` binary embeds it for the demo).
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    match Cli::try_parse_from(args) {
        Ok(cli) => dispatch(cli),
        Err(e) => e.exit(),
    }
}

fn dispatch(cli: Cli) -> std::process::ExitCode {
    fedslice::process::init_tracing(cli.verbose, cli.log_format);
    fedslice::process::exit_code(run(cli.command))
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Info { device } => {
            println!("site-agent {}", env!("CARGO_PKG_VERSION"));
            println!(
                "backends built: flex{}",
                if fedslice::device::WGPU_BUILT {
                    ", wgpu"
                } else {
                    ""
                }
            );
            println!(
                "model presets:  {}",
                fedslice::model::VitConfig::PRESETS.join(", ")
            );
            let kind: fedslice::device::BackendKind = device.parse()?;
            fedslice::device::open(kind)?;
            println!("device {kind}: ok");
            Ok(())
        }
        Command::Inspect { data, json, plane } => {
            crate::inspect::run(&data, plane, json.as_deref())
        }
        Command::Predict {
            model,
            input,
            json,
            sr,
            device,
        } => crate::predict::run(crate::predict::PredictOptions {
            model: &model,
            input: &input,
            json: json.as_deref(),
            sr: sr.as_deref(),
            device: &device,
        }),
        Command::ServeModel {
            model,
            listen,
            max_body_mb,
            device,
            token_file,
            tls_cert,
            tls_key,
            client_ca,
            insecure_no_auth,
            max_concurrent,
            request_timeout,
        } => crate::serve_model::run(crate::serve_model::ServeModelOptions {
            model,
            listen,
            max_body_bytes: max_body_mb.saturating_mul(1 << 20),
            device,
            token_file,
            tls_cert_key: tls_cert.zip(tls_key),
            client_ca,
            insecure_no_auth,
            max_concurrent,
            request_timeout,
        }),
        Command::DicomNode {
            model,
            ae_title,
            port,
            listen_host,
            storage,
            quiet_period,
            destination,
            device,
            max_associations,
            max_pdu,
        } => crate::dicom_node::run(crate::dicom_node::NodeOptions {
            model: &model,
            ae_title: &ae_title,
            port,
            listen_host: &listen_host,
            storage: &storage,
            quiet_period,
            destination,
            device: &device,
            max_associations,
            max_pdu,
        }),
        Command::Check { config, cache_dir } => crate::check::run(&config, cache_dir),
        Command::Run {
            config,
            cache_dir,
            until_idle,
            poll_wait,
        } => crate::run::run(
            &config,
            crate::run::RunOptions {
                until_idle,
                poll_wait: Duration::from_secs(poll_wait),
                cache_dir,
            },
        ),
    }
}
