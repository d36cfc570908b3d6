//! Soak: a 50-round federated job while random processes (the aggregator or
//! any site agent) are SIGKILLed at random moments and restarted, from a
//! fixed seed. The job must finish with every round closed exactly once,
//! every site counted once per round, every published model equal to the
//! FedAvg recomputed from the stored updates, and a final model identical,
//! bit for bit, to the one the same job produces undisturbed.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{Consortium, assert_bit_identical, phantom, verify_rounds};

const SITES: [&str; 3] = ["site-00", "site-01", "site-02"];
const ROUNDS: u32 = 50;

/// xorshift64*: a fixed sequence of choices without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
    }
}

fn consortium(data: &std::path::Path) -> (Consortium, Vec<std::path::PathBuf>) {
    let consortium = Consortium::init();
    let bundles = SITES
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();
    consortium.pretrain_job(ROUNDS, 3, "30m");
    (consortium, bundles)
}

#[test]
fn random_kills_over_fifty_rounds_end_in_the_undisturbed_model() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir.path();
    phantom(data, 3, 6, 31, 48);

    let (mut calm, calm_bundles) = consortium(data);
    calm.serve();
    let agents = calm_bundles.iter().map(|b| calm.spawn_agent(b)).collect();
    calm.expect_agents_succeed(agents, &calm_bundles, Duration::from_secs(300));
    let reference = verify_rounds(&calm, &SITES);

    let (mut soak, bundles) = consortium(data);
    soak.serve();
    let mut agents: Vec<Child> = bundles.iter().map(|b| soak.spawn_agent(b)).collect();
    let mut rng = Rng(0x005E_ED0F_50AC);
    let (mut server_kills, mut agent_kills) = (0usize, 0usize);
    let started = Instant::now();
    loop {
        let status = soak.status();
        if status["jobs"][0]["job"]["status"] == "finished" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the job did not finish under kills: {status}"
        );
        for (agent, bundle) in agents.iter_mut().zip(&bundles) {
            if let Some(exit) = agent.try_wait().expect("poll agent") {
                panic!(
                    "an agent exited ({exit}) before the job finished:\n{}",
                    std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200 + rng.below(1300)));
        let victim = rng.below(4) as usize;
        let down = Duration::from_millis(rng.below(300));
        if victim == 0 {
            soak.kill_server();
            std::thread::sleep(down);
            soak.serve();
            server_kills += 1;
        } else {
            let agent = &mut agents[victim - 1];
            let _ = agent.kill();
            let _ = agent.wait();
            std::thread::sleep(down);
            *agent = soak.spawn_agent(&bundles[victim - 1]);
            agent_kills += 1;
        }
    }
    soak.expect_agents_succeed(agents, &bundles, Duration::from_secs(300));
    assert!(
        server_kills >= 3 && agent_kills >= 3,
        "too few kills to mean anything: {server_kills} aggregator, {agent_kills} agent"
    );

    let last = verify_rounds(&soak, &SITES);
    assert_bit_identical(&last, &reference, "the undisturbed run");
    let audit = soak.audit();
    let count = |event: &str| audit.iter().filter(|e| e["event"] == event).count();
    assert_eq!(
        count("round_closed"),
        ROUNDS as usize,
        "every round closed exactly once"
    );
    assert_eq!(count("service_started"), server_kills + 1);
    eprintln!(
        "soak: {ROUNDS} rounds, {server_kills} aggregator kills, {agent_kills} agent kills, {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
