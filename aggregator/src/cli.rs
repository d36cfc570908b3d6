//! Every `aggregator` subcommand and flag, and what each one does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use fedslice::aggregate::ServerOptimizer;
use fedslice::model::{SliceEmbedding, SlicePooling};
use fedslice::protocol::{Aggregation, Phase};
use fedslice::wire::Dtype;

use crate::engine::{Engine, StatePaths};
use crate::state::{State, now};

#[derive(Parser, Debug)]
#[command(
    name = "aggregator",
    version,
    about = "fedslice aggregator: consortium CA, site registry, federated rounds over mutual TLS"
)]
pub struct Cli {
    /// State folder (database, blobs, PKI).
    #[arg(
        long,
        global = true,
        env = "FEDSLICE_STATE",
        default_value = "aggregator-state"
    )]
    pub dir: PathBuf,
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
    /// Create the state folder: consortium CA, server certificate, database.
    Init(InitArgs),
    /// Enrol, revoke and list sites.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Create, list, cancel, pause and resume federated jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Run the HTTPS service (client certificates required).
    Serve(ServeArgs),
    /// Jobs, rounds, sites and their last contact.
    Status(StatusArgs),
    /// The most recent audit-log entries.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Copy the state (a database snapshot, blobs, PKI) into one archive, also while serving.
    /// The archive holds the CA key: it is created 0600; keep it like the key.
    Backup {
        /// The archive to write; it must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Bring a backup back into --dir, which must be empty or absent. Every blob is checked
    /// against its digest, and the database against the manifest, before anything lands there.
    Restore {
        /// The archive `aggregator backup` wrote.
        #[arg(long)]
        from: PathBuf,
    },
    /// Free room: keep the newest model versions of each job, drop the update blobs of rounds
    /// closed long enough ago (their reports stay), and remove blobs nothing needs.
    Prune(PruneArgs),
    /// Write a finished finetune job's global classifier (weights + config).
    Export {
        #[arg(long)]
        job: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Model versions kept per job, newest first. A job's current model and an open
    /// round's base model are always kept.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_models: u32,
    /// Also drop the stored site updates of rounds closed at least this many days ago
    /// (0: every closed round). Their reports stay for `status` and `export`.
    #[arg(long, value_name = "DAYS")]
    pub drop_updates_after: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The URL sites will use to reach this aggregator; its host goes into the server certificate.
    #[arg(long)]
    pub url: String,
    /// Extra host names or IPs for the server certificate.
    #[arg(long = "san")]
    pub extra_sans: Vec<String>,
    #[arg(long, default_value_t = 3650)]
    pub ca_days: u32,
}

#[derive(Subcommand, Debug)]
pub enum SiteCommand {
    /// Issue a site's certificate and write its bundle.
    Add {
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Stop accepting a site's certificate (takes effect on its next request).
    Revoke { name: String },
    /// Enrolled sites.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Queue a job; jobs run one after another in creation order.
    Create(JobArgs),
    /// Every job: state (pending, running, paused, finished, cancelled, failed) and rounds done.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a pending or running job for good. Its open round closes without a result (the
    /// last published model stays), later uploads for it are refused with the reason, and the
    /// next job in the queue starts.
    Cancel {
        job: String,
        /// Why, for the audit log and the sites' logs.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Hold a pending or running job: no work is handed out, its open round neither closes nor
    /// times out, and (while it is running) no later job starts.
    Pause { job: String },
    /// Let a paused job go on; its open round gets back the time it had left.
    Resume { job: String },
}

#[derive(Args, Debug)]
pub struct JobArgs {
    #[arg(long)]
    pub phase: Phase,
    #[arg(long, default_value = "test")]
    pub preset: String,
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    #[arg(long, default_value_t = 1)]
    pub min_sites: u32,
    #[arg(long, default_value_t = 1)]
    pub local_epochs: usize,
    /// Seconds (or 90s, 10m, 2h) after which a round closes once min-sites reported.
    #[arg(long, default_value = "10m", value_parser = parse_duration_s)]
    pub round_timeout: u64,
    /// Finetune only: start the encoder from this finished pretrain job's global model.
    #[arg(long)]
    pub init_from: Option<String>,
    /// Finetune only: start from random weights, without --init-from (say so on purpose:
    /// a forgotten --init-from would otherwise waste the whole job).
    #[arg(long, conflicts_with = "init_from")]
    pub from_scratch: bool,
    /// Precision of the updates sites send: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
    /// fedavg, median or trimmed-mean.
    #[arg(long, default_value = "fedavg")]
    pub aggregation: String,
    /// trimmed-mean: values dropped at each end per coordinate.
    #[arg(long, default_value_t = 1)]
    pub trim: usize,
    /// sgd (server learning rate on the mean update; 1 = FedAvg) or adam (FedAdam).
    #[arg(long, default_value = "sgd")]
    pub server_optimizer: String,
    #[arg(long, default_value_t = 1.0)]
    pub server_lr: f32,
    /// Scale every site's update down to this L2 norm before aggregating.
    #[arg(long)]
    pub clip_update_norm: Option<f64>,
    /// FedProx μ: sites pull their weights towards the global model during local training (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub fedprox_mu: f64,
    /// transformer or max slice pooling (finetune).
    #[arg(long, default_value = "transformer")]
    pub pooling: SlicePooling,
    /// What embeds a slice (finetune): max-patch (max over patch tokens), mean-patch
    /// (their mean) or cls (CLS token).
    #[arg(long, default_value_t = Default::default())]
    pub slice_embedding: SliceEmbedding,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub dp: DpArgs,
}

/// Site-level differential privacy (DP-FedAvg, McMahan et al. 2018).
#[derive(Args, Debug)]
pub struct DpArgs {
    /// Noise multiplier z (noise sd over the clip norm); turns DP on and needs
    /// --dp-clip and --dp-epsilon.
    #[arg(long)]
    pub dp_noise_multiplier: Option<f64>,
    /// L2 norm C each site clips its update to.
    #[arg(long)]
    pub dp_clip: Option<f64>,
    #[arg(long, default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// The epsilon the consortium's privacy ledger may reach through this job;
    /// a round that would pass it is not run.
    #[arg(long)]
    pub dp_epsilon: Option<f64>,
    /// Poisson rate at which sites are sampled each round. Only 1 (every site,
    /// every round) is implemented by the round engine.
    #[arg(long, default_value_t = 1.0)]
    pub dp_sampling_rate: f64,
    /// The fixed denominator m: sites expected per round (default: the sites
    /// enrolled and active now).
    #[arg(long)]
    pub dp_sites: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on; default: all interfaces on the init URL's port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Largest accepted upload, MiB.
    #[arg(long, default_value_t = 512)]
    pub max_body_mib: usize,
    /// Plain-HTTP operator listener (/healthz, /readyz, /metrics), or `off`.
    /// Default: 127.0.0.1:9464 (loopback only; a clash there only warns).
    #[arg(long, value_name = "ADDR|off")]
    pub operator_listen: Option<String>,
    /// File holding a bearer token the operator listener then requires on
    /// every request; needed to bind it to a non-loopback address.
    #[arg(long, value_name = "FILE")]
    pub operator_token_file: Option<PathBuf>,
    /// Open site connections at once; more are closed unanswered.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// TLS handshakes in progress at once; more are closed unanswered.
    #[arg(long, default_value_t = 64)]
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one address.
    #[arg(long, default_value_t = 16)]
    pub max_handshakes_per_ip: usize,
    /// Longest a TLS handshake may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration_s)]
    pub handshake_timeout: u64,
    /// Longest a connection may wait without a complete request head (new or
    /// kept alive), and the longest pause inside an upload body.
    #[arg(long, default_value = "30s", value_parser = parse_duration_s)]
    pub idle_timeout: u64,
    /// Refusals from one peer within this window share one audit row that
    /// records their count (the first is written at once).
    #[arg(long, default_value = "60s", value_parser = parse_duration_s)]
    pub refusal_window: u64,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

pub fn parse_duration_s(s: &str) -> Result<u64, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 300, 90s, 10m, 2h)"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use s, m or h)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{s}` is too long a duration"))
}

/// Host and port of an `https://HOST:PORT` URL.
pub fn parse_url(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("`{url}`: the aggregator URL must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6
            .split_once(']')
            .with_context(|| format!("`{url}`: unterminated IPv6 address"))?;
        (host.to_string(), tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    anyhow::ensure!(!host.is_empty(), "`{url}`: no host");
    let port = match port {
        Some(p) => p
            .parse()
            .with_context(|| format!("`{url}`: `{p}` is not a port"))?,
        None => 443,
    };
    Ok((host, port))
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
    fedslice::process::exit_code(run(cli))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.dir;
    match cli.command {
        Command::Init(args) => init(&dir, &args),
        Command::Site(SiteCommand::Add { name, out, days }) => {
            crate::enrol::add_site(&dir, &name, &out, days)
        }
        Command::Site(SiteCommand::Revoke { name }) => {
            open_state(&dir)?.revoke_site(&name)?;
            println!("revoked site `{name}`: its certificate is refused from the next request on");
            Ok(())
        }
        Command::Site(SiteCommand::List { json }) => {
            crate::report::list_sites(&open_state(&dir)?, json)
        }
        Command::Job(JobCommand::Create(args)) => create_job(&dir, &args),
        Command::Job(JobCommand::List { json }) => {
            crate::report::list_jobs(&open_state(&dir)?, json)
        }
        Command::Job(JobCommand::Cancel { job, reason }) => {
            open_state(&dir)?.cancel_job(&job, &reason)?;
            println!(
                "cancelled {job}: its open round is closed without a result; sites are told when they next upload or poll"
            );
            Ok(())
        }
        Command::Job(JobCommand::Pause { job }) => {
            open_state(&dir)?.pause_job(&job)?;
            println!(
                "paused {job}: no work is handed out and its round's clock is stopped (`aggregator job resume {job}`)"
            );
            Ok(())
        }
        Command::Job(JobCommand::Resume { job }) => {
            open_state(&dir)?.resume_job(&job)?;
            println!("resumed {job}");
            Ok(())
        }
        Command::Serve(args) => serve(&dir, &args),
        Command::Status(args) => {
            let paths = StatePaths::new(&dir);
            let service = crate::operator::probe(&paths)?;
            let state = open_state(&dir)?;
            let storage = crate::retention::storage(&paths)?;
            crate::report::status(&state, &service, &storage, args.json)
        }
        Command::Backup { out } => crate::backup::run_backup(&dir, &out),
        Command::Restore { from } => crate::backup::run_restore(&from, &dir),
        Command::Prune(args) => crate::retention::run_prune(&dir, &args),
        Command::Audit { limit, json } => crate::report::audit(&open_state(&dir)?, limit, json),
        Command::Export { job, out } => crate::export::export(&dir, &job, &out),
    }
}

pub fn open_state(dir: &Path) -> anyhow::Result<State> {
    let paths = StatePaths::new(dir);
    anyhow::ensure!(
        paths.db().is_file(),
        "{} is not an aggregator state folder (run `aggregator init --dir {} --url https://HOST:PORT` first)",
        dir.display(),
        dir.display()
    );
    State::open(&paths.db()).with_context(|| format!("opening {}", paths.db().display()))
}

fn init(dir: &Path, args: &InitArgs) -> anyhow::Result<()> {
    let paths = StatePaths::new(dir);
    if paths.db().exists() {
        bail!(
            "{} already holds an aggregator state; refusing to overwrite its CA",
            dir.display()
        );
    }
    let (host, port) = parse_url(&args.url)?;
    std::fs::create_dir_all(paths.pki())
        .with_context(|| format!("creating {}", paths.pki().display()))?;
    crate::enrol::create_pki(&paths, &host, &args.extra_sans, args.ca_days)?;
    let state = State::open(&paths.db())?;
    state.set_meta("url", &args.url)?;
    state.set_meta("port", &port.to_string())?;
    state.audit(
        "initialised",
        None,
        &format!("consortium CA created; url {}", args.url),
    )?;
    println!("initialised {} for {}", dir.display(), args.url);
    println!(
        "next: aggregator --dir {} site add NAME --out BUNDLE_DIR",
        dir.display()
    );
    Ok(())
}

fn create_job(dir: &Path, args: &JobArgs) -> anyhow::Result<()> {
    match args.phase {
        Phase::Finetune if args.init_from.is_none() && !args.from_scratch => bail!(
            "a finetune job without --init-from starts from random weights: pass --init-from JOB \
             (a pretrain job) or, if that is what you want, --from-scratch"
        ),
        Phase::Pretrain if args.from_scratch => {
            bail!("--from-scratch is for finetune jobs; a pretrain job always starts from scratch")
        }
        _ => {}
    }
    let state = open_state(dir)?;
    let aggregation = match args.aggregation.as_str() {
        "fedavg" => Aggregation::Fedavg,
        "median" => Aggregation::Median,
        "trimmed-mean" => Aggregation::TrimmedMean { trim: args.trim },
        other => bail!("unknown --aggregation `{other}` (fedavg, median or trimmed-mean)"),
    };
    let server_optimizer = ServerOptimizer::named(&args.server_optimizer, args.server_lr)?;
    let spec = fedslice::federated::job_spec(&fedslice::federated::JobOptions {
        phase: args.phase,
        preset: args.preset.clone(),
        pooling: args.pooling,
        slice_embedding: args.slice_embedding,
        rounds: args.rounds,
        min_sites: args.min_sites,
        local_epochs: args.local_epochs,
        round_timeout_s: args.round_timeout,
        init_from: args.init_from.clone(),
        dtype: args.dtype,
        aggregation,
        server_optimizer,
        clip_update_norm: args.clip_update_norm,
        fedprox_mu: args.fedprox_mu,
        seed: args.seed,
    })?;
    let spec = with_dp(&state, spec, &args.dp)?;
    let plan = match &spec.dp {
        Some(dp) => Some(dp_plan(&state, &spec, dp)?),
        None => None,
    };
    let id = state.create_job(&spec)?;
    // The id alone on stdout, for scripts; the privacy plan for people on stderr.
    println!("{id}");
    if let Some(plan) = plan {
        eprintln!("{plan}");
    }
    Ok(())
}

fn with_dp(
    state: &State,
    mut spec: fedslice::protocol::JobSpec,
    args: &DpArgs,
) -> anyhow::Result<fedslice::protocol::JobSpec> {
    let Some(z) = args.dp_noise_multiplier else {
        anyhow::ensure!(
            args.dp_clip.is_none() && args.dp_epsilon.is_none() && args.dp_sites.is_none(),
            "--dp-clip, --dp-epsilon and --dp-sites need --dp-noise-multiplier (which turns DP on)"
        );
        return Ok(spec);
    };
    let expected_sites = match args.dp_sites {
        Some(m) => m,
        None => state.active_sites()?,
    };
    spec.dp = Some(fedslice::privacy::DpConfig {
        noise_multiplier: z,
        clip_norm: args
            .dp_clip
            .context("a DP job needs --dp-clip C (the L2 norm sites clip their update to)")?,
        delta: args.dp_delta,
        epsilon_budget: args
            .dp_epsilon
            .context("a DP job needs --dp-epsilon (its privacy budget)")?,
        sampling_rate: args.dp_sampling_rate,
        expected_sites,
    });
    spec.check_dp().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(spec)
}

/// What a DP job will spend and what the noise does to it, for `job create`.
fn dp_plan(
    state: &State,
    spec: &fedslice::protocol::JobSpec,
    dp: &fedslice::privacy::DpConfig,
) -> anyhow::Result<String> {
    use fedslice::privacy::accountant;
    let device = fedslice::device::open(fedslice::device::BackendKind::Flex)?;
    let parameters = fedslice::federated::initial_model(spec, None, &device)?.num_values();
    let earlier = crate::ledger::releases(state, None)?;
    let rounds = u64::from(spec.rounds);
    let alone = accountant::epsilon(&[dp.release(rounds)], dp.delta)?;
    let total = dp.epsilon_after(&earlier, rounds)?;
    let so_far = if earlier.is_empty() {
        0.0
    } else {
        accountant::epsilon(&earlier, dp.delta)?.epsilon
    };
    let mut fit = 0;
    while fit < rounds && dp.epsilon_after(&earlier, fit + 1)?.epsilon <= dp.epsilon_budget {
        fit += 1;
    }
    let budget_line = if fit == rounds {
        format!("all {rounds} rounds fit the budget {}", dp.epsilon_budget)
    } else {
        format!(
            "only {fit} of {rounds} rounds fit the budget {}: round {} and later will be refused",
            dp.epsilon_budget,
            fit + 1
        )
    };
    let calibrated = match accountant::calibrate_z(
        &earlier,
        rounds,
        dp.sampling_rate,
        dp.epsilon_budget,
        dp.delta,
    )? {
        Some(z) => format!("z >= {z:.4} would fit all {rounds} rounds in the budget"),
        None => "no z fits a round in the budget: earlier jobs have spent it".into(),
    };
    let ratio = dp.noise_to_signal(parameters);
    Ok(format!(
        "differential privacy (DP-FedAvg); unit of privacy: {unit}\n\
         - z = {z}, C = {c}, delta = {delta:e}, m = {m} sites per round; uniform weights and a \
         fixed denominator (sample counts do not weight a DP mean); sampling: {sampling}\n\
         - epsilon of this job alone over {rounds} rounds: {alone:.4} ({acc})\n\
         - epsilon of the consortium after it: {total:.4} (the ledger already holds {so_far:.4})\n\
         - {budget_line}; {calibrated}\n\
         - utility warning: the noise sd per coordinate is z*C/m = {sd:.4e}, i.e. {rel:.4} x the clip \
         norm; over {parameters} parameters the noise norm is {ratio:.1} x the largest possible mean \
         update (z*sqrt(d)/m){verdict}",
        unit = fedslice::privacy::UNIT,
        z = dp.noise_multiplier,
        c = dp.clip_norm,
        delta = dp.delta,
        m = dp.expected_sites,
        sampling = if dp.sampling_rate >= 1.0 {
            "every site, every round (no amplification claimed)".to_string()
        } else {
            format!("Poisson q = {}", dp.sampling_rate)
        },
        alone = alone.epsilon,
        acc = alone.accountant,
        total = total.epsilon,
        sd = dp.noise_sd(),
        rel = dp.noise_multiplier / f64::from(dp.expected_sites),
        verdict = if ratio > 1.0 {
            ": expect the noise to swamp the model's learning at this number of sites"
        } else {
            ""
        },
    ))
}

fn serve(dir: &Path, args: &ServeArgs) -> anyhow::Result<()> {
    // A folder that was never initialised stays so: not worth a restart loop.
    drop(open_state(dir).context(fedslice::process::Permanent::Config)?);
    let listen = match args.listen {
        Some(addr) => addr,
        None => {
            let port: u16 = open_state(dir)?
                .meta("port")?
                .and_then(|p| p.parse().ok())
                .unwrap_or(8443);
            SocketAddr::from(([0, 0, 0, 0], port))
        }
    };
    let operator = crate::operator::OperatorOptions::new(
        args.operator_listen.as_deref(),
        args.operator_token_file.as_deref(),
    )?;
    // Fail on a bad state folder before starting the runtime.
    drop(Engine::open(dir, args.max_body_mib << 20)?);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(crate::server::serve(
        dir,
        crate::server::ServeOptions {
            listen,
            max_body_bytes: args.max_body_mib << 20,
            limits: crate::limits::ConnectionLimits {
                max_connections: args.max_connections.max(1),
                max_handshakes: args.max_handshakes.max(1),
                max_handshakes_per_ip: args.max_handshakes_per_ip.max(1),
                handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
                idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            },
            refusal_window: Duration::from_secs(args.refusal_window),
            operator,
        },
    ))
}

/// Seconds since the epoch → "3 min ago" for status listings.
pub fn ago(t: Option<i64>) -> String {
    match t {
        Some(t) => format!(
            "{} ago",
            fedslice::heartbeat::duration((now() - t).max(0) as u64)
        ),
        None => "never".into(),
    }
}

/// Seconds since the epoch → "2026-12-07 08:30:00 UTC" for people to read.
pub fn utc(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => t.to_string(),
    }
}

/// Seconds since the epoch → RFC 3339 ("2026-12-07T08:30:00Z").
pub fn rfc3339(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => t.to_string(),
    }
}

/// A past moment as "2026-12-07T08:30:00Z (3 min ago)".
pub fn when(t: Option<i64>) -> String {
    match t {
        Some(t) => format!("{} ({})", rfc3339(t), ago(Some(t))),
        None => "never".into(),
    }
}

/// A certificate's end as "2027-12-07T08:30:00Z (in 365 days)" or "(expired 3 days ago)".
pub fn expiry(not_after: i64) -> String {
    let left = not_after - now();
    let human = fedslice::heartbeat::duration(left.unsigned_abs());
    if left >= 0 {
        format!("{} (in {human})", rfc3339(not_after))
    } else {
        format!("{} (EXPIRED {human} ago)", rfc3339(not_after))
    }
}
