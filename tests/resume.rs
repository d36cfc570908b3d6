//! A broken model download resumes from where it stopped (HTTP Range), and a
//! partial file that is not a prefix of the model is detected by the digest
//! and thrown away, never trained on.

mod common;

use std::time::Duration;

use common::Consortium;
use site_agent::client::Client;
use site_agent::config::SiteConfig;

/// One enrolled site, a one-round job, the aggregator serving.
fn one_site_with_a_job() -> (Consortium, std::path::PathBuf, SiteConfig) {
    let mut consortium = Consortium::init();
    let bundle = consortium.add_site("site-a", &consortium.dir.path().join("no-data"));
    consortium.aggregator(&["job", "create", "--phase", "pretrain", "--rounds", "1"]);
    consortium.serve();
    let config = SiteConfig::load(&bundle.join("site.toml")).expect("site.toml");
    (consortium, bundle, config)
}

async fn first_work(client: &Client) -> fedslice::protocol::Work {
    loop {
        let poll = client
            .poll(Duration::from_secs(5), false)
            .await
            .expect("poll");
        if let Some(work) = poll.work {
            return work;
        }
    }
}

#[test]
fn model_download_resumes_and_rejects_a_foreign_prefix() {
    let (_consortium, bundle, config) = one_site_with_a_job();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = Client::new(&config).expect("client");
        let work = first_work(&client).await;
        let digest = work.model_digest;
        let full = client
            .model(&digest, &bundle.join("full.download"))
            .await
            .expect("full download");
        assert_eq!(fedslice::wire::digest(&full), digest);

        // A download that broke halfway resumes and completes to the same bytes.
        let partial = bundle.join("half.download");
        std::fs::write(&partial, &full[..full.len() / 2]).expect("write half");
        let resumed = client
            .model(&digest, &partial)
            .await
            .expect("resumed download");
        assert_eq!(resumed, full);

        // A partial file that is not this model's prefix: the resumed bytes fail
        // the digest, the file is discarded, and the next attempt starts afresh.
        let mut foreign = full[..full.len() / 2].to_vec();
        foreign[10] ^= 0xff;
        std::fs::write(&partial, &foreign).expect("write foreign");
        let error = client
            .model(&digest, &partial)
            .await
            .expect_err("foreign prefix");
        assert!(error.to_string().contains("corrupted"), "{error:#}");
        assert!(!partial.exists(), "the unusable partial file is removed");
        assert_eq!(
            client
                .model(&digest, &partial)
                .await
                .expect("fresh download"),
            full
        );
    });
}

/// An update upload cut off mid-body resumes from the bytes the aggregator
/// kept; a wrong offset is answered with where to resume; bytes that do not
/// hash to their announced digest are thrown away.
#[test]
fn update_upload_resumes_after_a_dropped_connection() {
    use fedslice::wire::{self, DecodeLimits};
    use site_agent::client::PartOutcome;

    let (consortium, bundle, config) = one_site_with_a_job();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = Client::new(&config).expect("client");
        let work = first_work(&client).await;
        let model = client
            .model(&work.model_digest, &bundle.join("model.download"))
            .await
            .expect("model");
        let (_, global) = wire::decode(&model, &DecodeLimits::DEFAULT).expect("decode");
        let update = global.pseudo_random_like(0x2545_F491_4F6C_DD1D, 1e-3);
        let payload = work
            .encode_update(&update, 4, Default::default())
            .expect("encode");
        let digest = wire::digest(&payload);
        let total = payload.len() as u64;
        assert!(total > 100_000, "{total} bytes is too small to cut");

        // Bytes that do not hash to their name: refused and not kept.
        let mut foreign = payload.clone();
        foreign[total as usize / 2] ^= 0x01;
        let error = client
            .upload_part(&digest, 0, total, foreign.into())
            .await
            .expect_err("foreign bytes");
        assert!(error.to_string().contains("hash to"), "{error:#}");
        assert_eq!(client.upload_progress(&digest).await.expect("progress"), 0);

        // The connection drops once the first half is on the wire: the body
        // stream fails (after a pause, so that half really left).
        let half = payload[..total as usize / 2].to_vec();
        let chunks = futures_util::stream::unfold(0u8, move |step| {
            let half = half.clone();
            async move {
                match step {
                    0 => Some((Ok::<_, std::io::Error>(half), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
                        Some((Err(cut), 2))
                    }
                    _ => None,
                }
            }
        });
        let body = reqwest::Body::wrap_stream(chunks);
        assert!(client.upload_part(&digest, 0, total, body).await.is_err());
        let mut kept = 0;
        for _ in 0..50 {
            kept = client.upload_progress(&digest).await.expect("progress");
            if kept > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            kept > 0 && kept <= total / 2,
            "kept {kept} of {total}: {}",
            consortium.server_log()
        );

        // A chunk at the wrong offset is told to resume elsewhere (once the
        // server has let go of the dropped request: until then, "busy"). The
        // chunk is small: the server answers 416 without reading the body,
        // and a large body still being written would meet a closed socket.
        let mut wrong = PartOutcome::Busy;
        for _ in 0..100 {
            wrong = client
                .upload_part(&digest, 0, total, payload[..1024].to_vec().into())
                .await
                .expect("answer");
            if !matches!(wrong, PartOutcome::Busy) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(matches!(wrong, PartOutcome::ResumeElsewhere), "{wrong:?}");

        let receipt = client.upload(payload).await.expect("resumed upload");
        assert!(!receipt.duplicate);
        assert_eq!(receipt.digest, digest);
        assert_eq!(client.upload_progress(&digest).await.expect("progress"), 0);
    });
    let log = consortium.server_log();
    assert!(log.contains("upload resumed at byte"), "{log}");
    let status = consortium.status();
    let updates = status["jobs"][0]["rounds"][0]["updates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(updates.len(), 1, "{status}");
}
