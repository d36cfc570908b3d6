//! Issue 15: the operator listener's status page, as a browser renders it.
//! Two sites finish a two-round fine-tuning job (so there are curves to
//! draw), then a second job runs with one of the two agents, so its first
//! round stays open at 1 of 2 sites. Headless Debian `chromium` loads the
//! page: its DOM must hold both sites, the open round's progress and an SVG
//! chart; a screenshot is kept in the test's folder (and, with
//! `FEDSLICE_STATUS_SCREENSHOT=PATH`, copied there for the README).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Consortium, operator_tools_required, tool_available};

/// Runs headless chromium on `url` with `args` (a fresh profile in `profile`)
/// and returns its stdout.
fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn job(consortium: &Consortium, rounds: &str) -> String {
    consortium
        .aggregator(&[
            "job",
            "create",
            "--phase",
            "finetune",
            "--rounds",
            rounds,
            "--min-sites",
            "2",
            "--local-epochs",
            "1",
            "--from-scratch",
        ])
        .trim()
        .to_string()
}

#[test]
fn the_status_page_shows_sites_round_progress_and_charts_in_a_browser() {
    if !tool_available("chromium") {
        assert!(
            !operator_tools_required(),
            "FEDSLICE_REQUIRE_OPERATOR_TOOLS is set but chromium is not installed"
        );
        eprintln!("chromium not installed: status page browser test skipped");
        return;
    }
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    common::phantom(&data, 2, 16, 23, 48);
    let bundles = [
        consortium.add_site("site-00", &data.join("site-00")),
        consortium.add_site("site-01", &data.join("site-01")),
    ];
    let first = job(&consortium, "2");
    consortium.serve();
    let agents = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(600));

    // The second job waits for site-01, whose agent is not running.
    let second = job(&consortium, "3");
    let agent = consortium.spawn_agent(&bundles[0]);
    let started = Instant::now();
    loop {
        let status = consortium.status();
        let updates = &status["jobs"][1]["rounds"][0]["updates"];
        if updates.as_array().is_some_and(|u| u.len() == 1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "site-00 never reported to {second}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let url = format!("{}/", consortium.operator_url());
    let profile = consortium.dir.path().join("chromium-profile");
    let dom = chromium(&profile, &url, &["--dump-dom"]);
    for site in ["site-00", "site-01"] {
        assert!(
            dom.contains(&format!("data-site=\"{site}\"")),
            "{site} missing:\n{dom}"
        );
    }
    assert!(dom.contains(&format!("id=\"job-{first}\"")), "{dom}");
    assert!(dom.contains(&format!("id=\"job-{second}\"")), "{dom}");
    assert!(
        dom.contains("round 1: 1 of 2 sites"),
        "no open-round progress:\n{dom}"
    );
    assert!(dom.contains("<svg class=\"chart\""), "no chart:\n{dom}");
    assert!(dom.contains("<polyline"), "no curve in the chart:\n{dom}");
    assert!(
        dom.contains("validation AUC"),
        "no AUC chart for the fine-tuning job:\n{dom}"
    );

    // The audit filter works from the URL alone (a plain GET form).
    let filtered = chromium(
        &profile,
        &format!("{url}?audit=job_started"),
        &["--dump-dom"],
    );
    assert!(filtered.contains("job_started"), "{filtered}");
    assert!(!filtered.contains(">site_enrolled<"), "{filtered}");

    let shot = consortium.dir.path().join("status-page.png");
    chromium(
        &profile,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1700",
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Some(copy) = std::env::var_os("FEDSLICE_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, &copy).expect("copy the screenshot");
    }

    let mut agent = agent;
    let _ = agent.kill();
    let _ = agent.wait();
}
