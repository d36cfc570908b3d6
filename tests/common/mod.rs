//! A consortium on loopback for integration tests: an aggregator state folder,
//! enrolled site bundles and a running `aggregator serve`, all through the
//! `fedslice` executable (which embeds the aggregator and site-agent CLIs).

#![allow(dead_code)]

pub mod two_rounds;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn fedslice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedslice"))
}

fn check(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub struct Consortium {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub port: u16,
    pub url: String,
    server: Option<Child>,
}

impl Consortium {
    pub fn init() -> Self {
        Self::init_with(|_| {})
    }

    /// `init`, after `prepare` has had the (empty, existing) state folder:
    /// to mount a small filesystem there, say.
    pub fn init_with(prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state folder");
        prepare(&state);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("https://127.0.0.1:{port}");
        let me = Self {
            dir,
            state,
            port,
            url,
            server: None,
        };
        me.aggregator(&["init", "--url", &me.url.clone()]);
        me
    }

    /// Runs `aggregator --dir STATE <args>` and returns its stdout (panics on failure).
    pub fn aggregator(&self, args: &[&str]) -> String {
        let output = self.aggregator_output(args);
        check(output, &format!("aggregator {}", args.join(" ")))
    }

    pub fn aggregator_output(&self, args: &[&str]) -> Output {
        fedslice()
            .arg("aggregator")
            .arg("--dir")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("run aggregator")
    }

    /// Enrols `name` and points its `site.toml` at `data`; returns the bundle folder.
    pub fn add_site(&self, name: &str, data: &Path) -> PathBuf {
        let bundle = self.dir.path().join("sites").join(name);
        self.aggregator(&["site", "add", name, "--out", &bundle.display().to_string()]);
        let toml = format!(
            "site = \"{name}\"\naggregator_url = \"{}\"\nca_cert = \"ca.pem\"\ncert = \"site.pem\"\nkey = \"site.key\"\ndata = \"{}\"\ncache_dir = \"cache\"\n",
            self.url,
            data.display()
        );
        std::fs::write(bundle.join("site.toml"), toml).expect("write site.toml");
        bundle
    }

    pub fn serve(&mut self) {
        self.serve_with_env(&[]);
    }

    /// `serve` with extra environment variables (fault injection).
    pub fn serve_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("aggregator.log"))
            .expect("log file");
        let child = fedslice()
            .arg("aggregator")
            .arg("--dir")
            .arg(&self.state)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            // Any free loopback port, so consortia in parallel tests never
            // clash on the default; `operator_url` reads the one chosen.
            .args(["--operator-listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start aggregator");
        self.server = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "aggregator did not start listening: {}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to flush or clean up, like a power cut.
    pub fn kill_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as systemd stops the service; returns how long it took to exit.
    pub fn terminate_server(&mut self, limit: Duration) -> Duration {
        let pid = self.server.as_ref().expect("server running").id();
        let sent = Instant::now();
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .expect("run sh");
        assert!(status.success(), "kill -TERM failed");
        self.wait_server_exit(limit);
        sent.elapsed()
    }

    /// Waits for the server to exit on its own (an injected crash) and
    /// returns how it ended.
    pub fn wait_server_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            let child = self.server.as_mut().expect("server running");
            if let Some(status) = child.try_wait().expect("poll server") {
                self.server = None;
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the server did not crash within {limit:?}: {}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running server's operator listener (`http://127.0.0.1:PORT`),
    /// from the serve lock it writes once listening.
    pub fn operator_url(&self) -> String {
        let started = Instant::now();
        loop {
            let lock = std::fs::read_to_string(self.state.join("serve.lock")).unwrap_or_default();
            if let Some(url) = lock.lines().find_map(|l| l.strip_prefix("operator=")) {
                return url.to_string();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no operator listener in serve.lock: {}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("aggregator.log")).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.aggregator(&["status", "--json"])).expect("status JSON")
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.aggregator(&["audit", "--json", "--limit", "10000"]))
            .expect("audit JSON")
    }

    /// Starts `site-agent run --until-idle` for a bundle.
    pub fn spawn_agent(&self, bundle: &Path) -> Child {
        self.spawn_agent_with(bundle, &["--until-idle", "--poll-wait", "2"])
    }

    /// Starts `site-agent run <options>` for a bundle, logging to its `agent.log`.
    pub fn spawn_agent_with(&self, bundle: &Path, options: &[&str]) -> Child {
        let log = std::fs::File::create(bundle.join("agent.log")).expect("log file");
        fedslice()
            .args(["site-agent", "run"])
            .args(options)
            .arg("--config")
            .arg(bundle.join("site.toml"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start site agent")
    }
}

impl Drop for Consortium {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` with a deadline, killing it on timeout.
pub fn wait_for(mut child: Child, limit: Duration, what: &str) -> Output {
    let started = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("poll child") {
            return child.wait_with_output().expect("collect child output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect child output");
            panic!(
                "{what} did not finish within {limit:?}; stdout:\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CI installs DCMTK and dicom3tools and sets this, so the tests that use
/// them cannot silently skip there.
pub fn dicom_tools_required() -> bool {
    std::env::var_os("FEDSLICE_REQUIRE_DICOM_TOOLS").is_some()
}

/// CI installs promtool and chromium and sets this, so the operator tests
/// that use them (metrics lint, status page in a browser) cannot skip there.
pub fn operator_tools_required() -> bool {
    std::env::var_os("FEDSLICE_REQUIRE_OPERATOR_TOOLS").is_some()
}

pub fn tool_available(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `cmd` and returns its stdout (panics, with its output, on failure).
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    check(out, what)
}

/// Trains the test preset briefly on the DICOM cohort `data` (`root/run`)
/// and exports it as a bundle (`root/bundle`); returns the run and bundle folders.
pub fn train_and_export(data: &Path, root: &Path) -> (PathBuf, PathBuf) {
    let run = root.join("run");
    run_ok(
        fedslice()
            .args(["train", "--data"])
            .arg(data)
            .args([
                "--preset",
                "test",
                "--pretrain-epochs",
                "1",
                "--finetune-epochs",
                "2",
                "--out",
            ])
            .arg(&run),
        "train",
    );
    let bundle = root.join("bundle");
    run_ok(
        fedslice()
            .args(["export", "--from"])
            .arg(&run)
            .arg("--out")
            .arg(&bundle),
        "export",
    );
    (run, bundle)
}

pub fn phantom(out: &Path, sites: usize, exams: usize, seed: u64, image_size: usize) {
    phantom_as("mrnet", out, sites, exams, seed, image_size);
}

/// `fedslice phantom --format FORMAT --textbook` with a quarter of each site
/// held out: tests exercise the plumbing on textbook tears; how the recipe
/// does on the full phantom is `fedslice study`'s job.
pub fn phantom_as(
    format: &str,
    out: &Path,
    sites: usize,
    exams: usize,
    seed: u64,
    image_size: usize,
) {
    let output = fedslice()
        .arg("phantom")
        .arg("--out")
        .arg(out)
        .args([
            "--format",
            format,
            "--sites",
            &sites.to_string(),
            "--exams-per-site",
            &exams.to_string(),
            "--seed",
            &seed.to_string(),
            "--image-size",
            &image_size.to_string(),
            "--valid-fraction",
            "0.25",
            "--textbook",
        ])
        .output()
        .expect("run phantom");
    check(output, "phantom");
}

fn decode_blob(blobs: &aggregator::blobs::BlobStore, digest: &str) -> fedslice::wire::TensorMap {
    let bytes = blobs.get(digest).expect("blob present and intact");
    fedslice::wire::decode(&bytes, &fedslice::wire::DecodeLimits::DEFAULT)
        .expect("decodes")
        .1
}

/// Checks every round of the consortium's first job, from the aggregator's
/// own record: each of `sites` counted exactly once, and each published
/// model equal to its base plus the FedAvg of the stored updates, recomputed
/// here independently. Returns the last published model.
pub fn verify_rounds(consortium: &Consortium, sites: &[&str]) -> fedslice::wire::TensorMap {
    use fedslice::aggregate::FedAvg;
    let status = consortium.status();
    let entry = &status["jobs"][0];
    assert_eq!(entry["job"]["status"], "finished", "{entry}");
    let blobs =
        aggregator::blobs::BlobStore::open(&consortium.state.join("blobs")).expect("blob store");
    let mut last = None;
    for round in entry["rounds"].as_array().expect("rounds") {
        let updates = round["updates"].as_array().expect("updates");
        let mut counted: Vec<&str> = updates.iter().filter_map(|u| u["site"].as_str()).collect();
        counted.sort();
        assert_eq!(counted, sites, "each site counted once: {round}");
        let mut global = decode_blob(
            &blobs,
            round["round"]["base_digest"].as_str().expect("base"),
        );
        let mut fedavg = FedAvg::new(global.schema());
        for update in updates {
            let delta = decode_blob(&blobs, update["digest"].as_str().expect("digest"));
            fedavg
                .add(&delta, update["samples"].as_f64().expect("samples"))
                .expect("add");
        }
        global
            .add_scaled(&fedavg.finish().expect("mean"), 1.0)
            .expect("apply");
        let published = decode_blob(
            &blobs,
            round["round"]["result_digest"].as_str().expect("result"),
        );
        for ((name, a), (_, b)) in published.iter().zip(global.iter()) {
            assert_eq!(
                a.data(),
                b.data(),
                "round {}: {name} differs from the recomputed FedAvg",
                round["round"]["round"]
            );
        }
        last = Some(published);
    }
    last.expect("at least one round")
}

impl Consortium {
    /// `job create --phase pretrain` with one local epoch per round; returns the job id.
    pub fn pretrain_job(&self, rounds: u32, min_sites: usize, round_timeout: &str) -> String {
        self.aggregator(&[
            "job",
            "create",
            "--phase",
            "pretrain",
            "--rounds",
            &rounds.to_string(),
            "--min-sites",
            &min_sites.to_string(),
            "--local-epochs",
            "1",
            "--round-timeout",
            round_timeout,
        ])
        .trim()
        .to_string()
    }

    /// Waits for each agent to exit and asserts it succeeded, showing its
    /// log and the aggregator's if not.
    pub fn expect_agents_succeed(&self, agents: Vec<Child>, bundles: &[PathBuf], limit: Duration) {
        for (agent, bundle) in agents.into_iter().zip(bundles) {
            let output = wait_for(agent, limit, "site agent");
            assert!(
                output.status.success(),
                "agent failed:\n{}\naggregator:\n{}",
                std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default(),
                self.server_log()
            );
        }
    }

    /// Waits until the first job's round `round` (1-based) has closed.
    pub fn wait_round_closed(&self, round: usize, limit: Duration) {
        let started = Instant::now();
        loop {
            let status = self.status();
            if status["jobs"][0]["rounds"][round - 1]["round"]["status"] == "closed" {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "round {round} never closed: {status}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Asserts two models have the same tensors, bit for bit.
pub fn assert_bit_identical(
    model: &fedslice::wire::TensorMap,
    reference: &fedslice::wire::TensorMap,
    what: &str,
) {
    assert_eq!(
        model.schema(),
        reference.schema(),
        "{what}: different tensors"
    );
    for ((name, a), (_, b)) in model.iter().zip(reference.iter()) {
        let same = a
            .data()
            .iter()
            .zip(b.data())
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name} differs from {what}");
    }
}
