//! Backup, restore and retention (issue 16 items 5 and 6), through the executable.
//!
//! A backup taken while the aggregator serves a job, after its first round,
//! is restored into a fresh folder after the original is lost; served from
//! there, the job goes on to a final model bit for bit the undisturbed run's.
//! A damaged archive is refused and leaves nothing behind. Pruning a finished
//! job keeps what is still needed (the final models download and export) and
//! frees the rest, and spares young blobs while the service runs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::two_rounds::assert_same_as_undisturbed;
use common::{Consortium, phantom};

fn archive_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("archive")
        .permissions()
        .mode()
        & 0o777
}

/// `archive` with one byte of its first blob flipped, as `to`.
fn damage_a_blob(archive: &Path, to: &Path) {
    let mut reader = tar::Archive::new(std::fs::File::open(archive).expect("archive"));
    let mut writer = tar::Builder::new(std::fs::File::create(to).expect("damaged copy"));
    let mut damaged = false;
    for entry in reader.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut header = entry.header().clone();
        let name = entry.path().expect("name").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read entry");
        if !damaged && name.starts_with("blobs/") {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            damaged = true;
        }
        writer
            .append_data(&mut header, &name, bytes.as_slice())
            .expect("write entry");
    }
    writer.finish().expect("finish");
    assert!(damaged, "the archive holds no blob");
}

fn restore_into(consortium: &Consortium, archive: &Path, dir: &Path) -> std::process::Output {
    common::fedslice()
        .arg("aggregator")
        .arg("--dir")
        .arg(dir)
        .arg("restore")
        .arg("--from")
        .arg(archive)
        .current_dir(consortium.dir.path())
        .output()
        .expect("run restore")
}

#[test]
fn a_backup_taken_mid_job_restores_and_the_job_ends_as_if_undisturbed() {
    assert_same_as_undisturbed(&[], |consortium| {
        consortium.wait_round_closed(1, Duration::from_secs(300));
        let archive = consortium.dir.path().join("state-backup.tar");
        let said = consortium.aggregator(&["backup", "--out", &archive.display().to_string()]);
        assert!(said.contains("CA key"), "{said}");
        assert_eq!(
            archive_mode(&archive),
            0o600,
            "the archive holds the CA key"
        );
        // The machine is lost with whatever came in after the backup.
        consortium.kill_server();

        // Never over a state: the original folder is refused.
        let out = restore_into(consortium, &archive, &consortium.state);
        assert!(!out.status.success(), "restored over a state");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not empty"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // A damaged blob is found before anything lands in the folder.
        let damaged = consortium.dir.path().join("damaged.tar");
        damage_a_blob(&archive, &damaged);
        let elsewhere = consortium.dir.path().join("elsewhere");
        let out = restore_into(consortium, &damaged, &elsewhere);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a damaged archive was restored");
        assert!(stderr.contains("corrupt"), "{stderr}");
        assert_eq!(
            std::fs::read_dir(&elsewhere).expect("folder").count(),
            0,
            "a failed restore left files behind"
        );

        let restored = consortium.dir.path().join("restored");
        let out = restore_into(consortium, &archive, &restored);
        assert!(
            out.status.success(),
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        consortium.state = restored;
        let status = consortium.status();
        let rounds = status["jobs"][0]["rounds"].as_array().expect("rounds");
        assert_eq!(rounds[0]["round"]["status"], "closed", "{status}");
        consortium.serve();
    });
}

fn job(consortium: &Consortium, args: &[&str]) -> String {
    let mut all = vec![
        "job",
        "create",
        "--rounds",
        "2",
        "--min-sites",
        "2",
        "--local-epochs",
        "1",
        "--round-timeout",
        "10m",
    ];
    all.extend_from_slice(args);
    consortium.aggregator(&all).trim().to_string()
}

fn prune(consortium: &Consortium) -> serde_json::Value {
    let out = consortium.aggregator(&[
        "prune",
        "--keep-models",
        "1",
        "--drop-updates-after",
        "0",
        "--json",
    ]);
    serde_json::from_str(&out).expect("prune JSON")
}

/// `GET /v1/models/DIGEST` as an enrolled site; returns the status and body.
fn download(consortium: &Consortium, bundle: &Path, digest: &str) -> (u16, Vec<u8>) {
    let read = |name: &str| std::fs::read_to_string(bundle.join(name)).expect("bundle file");
    let tls = fedslice::tls::client_config(&read("ca.pem"), &read("site.pem"), &read("site.key"))
        .expect("client TLS");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let url = format!(
        "{}{}/{digest}",
        consortium.url,
        fedslice::protocol::paths::MODELS
    );
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let response = client.get(&url).send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.bytes().await.expect("body").to_vec())
        })
}

#[test]
fn pruning_a_finished_job_frees_blobs_and_keeps_its_final_model() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 2, 8, 7, 64);
    let bundles: Vec<_> = ["site-00", "site-01"]
        .iter()
        .map(|name| consortium.add_site(name, &data.join(name)))
        .collect();
    let pretrain = job(&consortium, &["--phase", "pretrain"]);
    let finetune = job(
        &consortium,
        &["--phase", "finetune", "--init-from", &pretrain],
    );
    consortium.serve();
    let agents: Vec<_> = bundles.iter().map(|b| consortium.spawn_agent(b)).collect();
    consortium.expect_agents_succeed(agents, &bundles, Duration::from_secs(600));

    let status = consortium.status();
    let before = &status["storage"];
    let final_of = |id: &str| -> String {
        status["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["job"]["id"] == id))
            .and_then(|j| j["job"]["model_digest"].as_str())
            .expect("final model")
            .to_string()
    };
    let (pretrained, finetuned) = (final_of(&pretrain), final_of(&finetune));
    let first_model = status["jobs"][0]["rounds"][0]["round"]["result_digest"]
        .as_str()
        .expect("round 1 model")
        .to_string();
    // v0..v2 of each job and 2 x 2 + 2 x 3 updates (the finetune job's
    // evaluation round included); the finetune job's v0 is made from the
    // pretrain job's last model, not the same bytes.
    let blobs_before = before["blobs"].as_u64().expect("blob count");
    assert_eq!(blobs_before, 16, "{before}");
    let text = consortium.aggregator(&["status"]);
    assert!(text.contains("storage: database"), "{text}");

    // While serving, what was just written may still be about to be used.
    let serving = prune(&consortium);
    assert_eq!(serving["models_dropped"], 4, "{serving}");
    assert_eq!(serving["updates_dropped"], 10, "{serving}");
    assert_eq!(serving["blobs_removed"], 0, "{serving}");
    let spared = serving["blobs_spared"].as_u64().expect("spared");
    assert_eq!(spared, blobs_before - 2, "{serving}");

    consortium.kill_server();
    let stopped = prune(&consortium);
    assert_eq!(stopped["blobs_removed"], spared, "{stopped}");
    assert_eq!(stopped["blobs_spared"], 0, "{stopped}");
    let freed = stopped["bytes_freed"].as_u64().expect("bytes freed");
    let bytes_before = before["blob_bytes"].as_u64().expect("bytes");
    assert_eq!(stopped["after"]["blobs"], 2, "{stopped}");
    assert_eq!(
        stopped["after"]["blob_bytes"].as_u64(),
        Some(bytes_before - freed),
        "{stopped}"
    );
    assert_eq!(consortium.status()["storage"]["blobs"], 2);

    // What stays still serves: the final models download, a pruned one is gone,
    // and the finetune job still exports (weights and the sites' reports).
    consortium.serve();
    for digest in [&pretrained, &finetuned] {
        let (code, body) = download(&consortium, &bundles[0], digest);
        assert_eq!(code, 200, "final model {digest}");
        assert_eq!(&fedslice::wire::digest(&body), digest);
    }
    assert_eq!(download(&consortium, &bundles[0], &first_model).0, 404);
    let model_dir = consortium.dir.path().join("model");
    consortium.aggregator(&[
        "export",
        "--job",
        &finetune,
        "--out",
        &model_dir.display().to_string(),
    ]);
    assert!(model_dir.join("model.safetensors").is_file());
    let card = std::fs::read_to_string(model_dir.join("MODEL_CARD.md")).expect("model card");
    assert!(
        card.contains("site-00") && card.contains("site-01"),
        "{card}"
    );
}
