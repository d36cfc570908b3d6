//! deploy/: the systemd units verify and are hardened (issue 16), and the
//! release tarball installs into a fresh root where the aggregator and a
//! site agent, run as the unprivileged service user from what was installed,
//! complete a one-round job.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{phantom, run_ok, tool_available, wait_for};

const UNITS: [&str; 4] = [
    "fedslice-aggregator.service",
    "fedslice-site-agent.service",
    "fedslice-serve-model.service",
    "fedslice-dicom-node.service",
];
/// The bar for `systemd-analyze security`: 0 is best, 10 worst.
const MAX_EXPOSURE: f64 = 2.5;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// CI installs systemd-analyze and sets this, so the unit checks cannot
/// silently skip there.
fn systemd_analyze_required() -> bool {
    std::env::var_os("FEDSLICE_REQUIRE_SYSTEMD_ANALYZE").is_some()
}

/// Stand-ins for the two installed binaries: this build's `fedslice`, which
/// embeds both CLIs (the workspace's own `aggregator` and `site-agent`
/// binaries are not rebuilt for this package's tests, so they may be stale).
fn stand_in_binaries(dir: &Path) -> PathBuf {
    let bin = dir.join("release");
    std::fs::create_dir_all(&bin).expect("bin folder");
    for name in ["aggregator", "site-agent"] {
        let path = bin.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec '{}' {name} \"$@\"\n",
                env!("CARGO_BIN_EXE_fedslice")
            ),
        )
        .expect("write stand-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir.to_path_buf()
}

fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let after = line.split(": ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn units_verify_and_are_hardened() {
    if !tool_available("systemd-analyze") {
        assert!(
            !systemd_analyze_required(),
            "FEDSLICE_REQUIRE_SYSTEMD_ANALYZE is set but systemd-analyze is missing"
        );
        eprintln!("skipping: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let bins = stand_in_binaries(dir.path()).join("release");
    for unit in UNITS {
        let text = std::fs::read_to_string(repo().join("deploy").join(unit)).expect("unit file");
        for code in fedslice::process::Permanent::ALL {
            let listed = text
                .lines()
                .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
                .unwrap_or_default();
            assert!(
                listed
                    .split_whitespace()
                    .any(|c| c == code.code().to_string()),
                "{unit}: RestartPreventExitStatus= lacks {} ({code})",
                code.code()
            );
        }
        for setting in ["UMask=0077", "LimitNOFILE=", "#CPUQuota=", "#MemoryMax="] {
            assert!(text.contains(setting), "{unit} lacks {setting}");
        }
        assert!(
            !text.contains("ReadWritePaths=/etc"),
            "{unit} writes under /etc"
        );
        // verify checks that ExecStart= names an executable: point it at
        // this build's stand-ins instead of /usr/local/bin.
        let local = dir.path().join(unit);
        std::fs::write(
            &local,
            text.replace("/usr/local/bin/", &format!("{}/", bins.display())),
        )
        .expect("write unit copy");
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&local)
            .output()
            .expect("run systemd-analyze verify");
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success(), "{unit}: verify failed:\n{said}");
        assert!(
            !said.contains(unit),
            "{unit}: verify complained about the unit:\n{said}"
        );
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&local)
            .output()
            .expect("run systemd-analyze security");
        let report = String::from_utf8_lossy(&security.stdout);
        let score =
            exposure(&report).unwrap_or_else(|| panic!("{unit}: no exposure level in:\n{report}"));
        eprintln!("{unit}: exposure {score}");
        assert!(
            score <= MAX_EXPOSURE,
            "{unit}: exposure {score} > {MAX_EXPOSURE}:\n{report}"
        );
    }
}

fn mode(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

fn id_of(file: &Path, name: &str) -> u32 {
    std::fs::read_to_string(file)
        .expect("passwd/group")
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields.first() == Some(&name)).then(|| fields.get(2)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in {}", file.display()))
}

fn install(unpacked: &Path, root: &Path) -> String {
    run_ok(
        Command::new("sh")
            .arg(unpacked.join("install.sh"))
            .env("DESTDIR", root),
        "install.sh",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn the_tarball_installs_and_runs_as_the_service_user() {
    for tool in ["tar", "sha256sum", "install"] {
        assert!(tool_available(tool), "{tool} is missing");
    }
    if !tool_available("systemd-sysusers") && !tool_available("useradd") {
        eprintln!("skipping: neither systemd-sysusers nor useradd is installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // The service user must reach the data and the stand-in binaries.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let target = stand_in_binaries(&dir.path().join("target"));
    let dist = dir.path().join("dist");
    let out = run_ok(
        Command::new("sh")
            .arg(repo().join("deploy/package.sh"))
            .arg(&dist)
            .env("FEDSLICE_NO_BUILD", "1")
            .env("CARGO_TARGET_DIR", &target),
        "package.sh",
    );
    let tarball = PathBuf::from(out.trim());
    assert!(tarball.is_file(), "{out}");
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path()),
        "unpack",
    );
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .expect("tarball name");
    let unpacked = dir.path().join(name);
    let sums = run_ok(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&unpacked),
        "sha256sum -c",
    );
    for file in [
        "bin/aggregator",
        "bin/site-agent",
        "install.sh",
        "README.md",
    ]
    .iter()
    .chain(UNITS.iter())
    {
        assert!(
            sums.contains(&format!("{file}: OK")),
            "{file} unchecked:\n{sums}"
        );
    }

    // Twice: the second run must change nothing and fail on nothing.
    let root = dir.path().join("root");
    install(&unpacked, &root);
    install(&unpacked, &root);
    let uid = id_of(&root.join("etc/passwd"), "fedslice");
    let gid = id_of(&root.join("etc/group"), "fedslice");
    for unit in UNITS {
        assert!(
            root.join("etc/systemd/system").join(unit).is_file(),
            "{unit}"
        );
    }
    assert!(root.join("usr/local/bin/site-agent").is_file());
    let owned = is_root();
    let (state_mode, state_uid, _) = mode(&root.join("var/lib/fedslice"));
    let (cache_mode, cache_uid, _) = mode(&root.join("var/cache/fedslice/site-agent"));
    let (site_mode, _, site_gid) = mode(&root.join("etc/fedslice/site"));
    assert_eq!((state_mode, cache_mode, site_mode), (0o700, 0o700, 0o750));
    if !owned {
        eprintln!("skipping the run as the service user: it needs root (setpriv)");
        return;
    }
    assert_eq!((state_uid, cache_uid, site_gid), (uid, uid, gid));

    // The consortium, as the deploy README says, from the installed files.
    let as_service = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .args(args);
        cmd
    };
    let aggregator = root.join("usr/local/bin/aggregator").display().to_string();
    let site_agent = root.join("usr/local/bin/site-agent").display().to_string();
    let state = root.join("var/lib/fedslice").display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("https://127.0.0.1:{port}");
    run_ok(
        &mut as_service(&[&aggregator, "--dir", &state, "init", "--url", &url]),
        "init",
    );
    let bundle = format!("{state}/bundles/st-olav");
    run_ok(
        &mut as_service(&[
            &aggregator,
            "--dir",
            &state,
            "site",
            "add",
            "st-olav",
            "--out",
            &bundle,
        ]),
        "site add",
    );
    run_ok(
        &mut as_service(&[
            &aggregator,
            "--dir",
            &state,
            "job",
            "create",
            "--phase",
            "pretrain",
            "--rounds",
            "1",
            "--local-epochs",
            "1",
        ]),
        "job create",
    );
    // The hospital copies the bundle in as root and sets `data`; install.sh
    // (run again) gives the files to the service's group, read-only.
    let data = dir.path().join("data");
    phantom(&data, 1, 4, 3, 48);
    let site = root.join("etc/fedslice/site");
    for file in ["ca.pem", "site.pem", "site.key", "site.toml"] {
        std::fs::copy(Path::new(&bundle).join(file), site.join(file)).expect("copy bundle");
    }
    let toml = std::fs::read_to_string(site.join("site.toml")).expect("site.toml");
    std::fs::write(
        site.join("site.toml"),
        toml.replace(
            "/path/to/this/site/knee-mri",
            &data.join("site-00").display().to_string(),
        ),
    )
    .expect("write site.toml");
    install(&unpacked, &root);
    let (key_mode, key_uid, key_gid) = mode(&site.join("site.key"));
    assert_eq!((key_mode, key_uid, key_gid), (0o640, 0, gid));

    let log = std::fs::File::create(dir.path().join("aggregator.log")).expect("log");
    let mut server = as_service(&[
        &aggregator,
        "--dir",
        &state,
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--operator-listen",
        "off",
    ])
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("start aggregator");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the installed aggregator did not start listening: {}",
            std::fs::read_to_string(dir.path().join("aggregator.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cache = root
        .join("var/cache/fedslice/site-agent")
        .display()
        .to_string();
    let config = site.join("site.toml").display().to_string();
    let check = as_service(&[
        &site_agent,
        "check",
        "--config",
        &config,
        "--cache-dir",
        &cache,
    ])
    .output()
    .expect("run check");
    let agent = as_service(&[
        &site_agent,
        "run",
        "--config",
        &config,
        "--cache-dir",
        &cache,
        "--until-idle",
        "--poll-wait",
        "1",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start agent");
    let agent = wait_for(agent, Duration::from_secs(300), "site agent");
    let status = as_service(&[&aggregator, "--dir", &state, "status", "--json"])
        .output()
        .expect("status");
    let _ = server.kill();
    let _ = server.wait();
    let server_log = std::fs::read_to_string(dir.path().join("aggregator.log")).unwrap_or_default();
    assert!(
        check.status.success(),
        "site-agent check failed as the service user:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        agent.status.success(),
        "agent failed:\n{}\naggregator:\n{server_log}",
        String::from_utf8_lossy(&agent.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["jobs"][0]["job"]["status"], "finished", "{status}");
    // The agent's cache is where the unit puts it, not beside the bundle.
    assert!(Path::new(&cache).join("sent-payloads.jsonl").is_file());
    assert!(!site.join("cache").exists(), "a cache appeared under /etc");
}
