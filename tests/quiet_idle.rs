//! Issue 15, "quiet idle": an aggregator and two agents with no job, for a
//! minute. The agents run as shipped (no `--until-idle`, the default 25 s
//! long-poll). Before the fix each idle agent polled in a tight loop, ran
//! into the rate limit and logged about 120 warnings a minute.
//!
//! What counts the requests is the aggregator's own request log (one debug
//! line per site request, refused ones included), not the agents' account.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Consortium, phantom};

const SITES: [&str; 2] = ["site-00", "site-01"];
/// The window: long enough for two full long-polls per site.
const WINDOW: Duration = Duration::from_secs(60);

/// Site requests in the aggregator's request log, per site.
fn requests(log: &str, site: &str) -> usize {
    let field = format!("site={site}");
    log.lines()
        .filter(|line| line.contains("site request"))
        .filter(|line| line.split_whitespace().any(|word| word == field))
        .count()
}

fn agent_log(bundle: &Path) -> String {
    std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default()
}

#[test]
fn an_idle_consortium_is_quiet_for_a_minute() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, SITES.len(), 8, 21, 48);
    let bundles: Vec<_> = SITES
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();
    consortium.serve_with_env(&[("RUST_LOG", "info,aggregator::server=debug")]);
    let mut agents: Vec<_> = bundles
        .iter()
        .map(|b| consortium.spawn_agent_with(b, &[]))
        .collect();

    // The window starts once both agents have found there is nothing to do
    // (after loading their exams), so start-up time does not dilute it.
    let started = Instant::now();
    while !bundles
        .iter()
        .all(|b| agent_log(b).contains("waiting for a job"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the agents never went idle:\n{}\n{}",
            agent_log(&bundles[0]),
            agent_log(&bundles[1])
        );
        for agent in &mut agents {
            assert!(
                agent.try_wait().expect("poll agent").is_none(),
                "an agent exited"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before: Vec<usize> = SITES
        .iter()
        .map(|s| requests(&consortium.server_log(), s))
        .collect();
    std::thread::sleep(WINDOW);
    let server_log = consortium.server_log();
    let logs: Vec<String> = bundles.iter().map(|b| agent_log(b)).collect();

    for (i, site) in SITES.iter().enumerate() {
        let total = requests(&server_log, site);
        let in_window = total - before[i];
        eprintln!(
            "{site}: {in_window} requests in the {} s window ({total} since start)",
            WINDOW.as_secs()
        );
        // 25 s long-polls give 2 or 3 in a minute; a spinning agent makes
        // hundreds. At least 2 shows the log counts this site's polls.
        assert!(
            (2..=4).contains(&in_window),
            "{site} made {in_window} requests in {WINDOW:?}:\n{server_log}"
        );
        let log = &logs[i];
        let noisy: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        eprintln!("{site}: {} warning or error lines", noisy.len());
        assert!(noisy.is_empty(), "{site} warned while idle:\n{log}");
        assert_eq!(
            log.matches("waiting for a job").count(),
            1,
            "said once, not per poll:\n{log}"
        );
    }
    let audit = consortium.audit();
    let refusals: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "rate_limited" || e["event"] == "request_refused")
        .collect();
    assert!(refusals.is_empty(), "{refusals:?}");
    // The one warning expected is the harness's own readiness probe (a bare
    // TCP connect, closed before any TLS handshake).
    let warnings: Vec<&str> = server_log
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("tls handshake eof"))
        .collect();
    assert!(warnings.is_empty(), "the aggregator warned: {warnings:#?}");

    // The agents' polls are waiting right now; they must not hold up a stop.
    let took = consortium.terminate_server(Duration::from_secs(10));
    eprintln!("aggregator stopped {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(5), "{took:?}");
    for mut agent in agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
}
