//! A broken model download resumes from where it stopped (HTTP Range), and a
//! partial file that is not a prefix of the model is detected by the digest
//! and thrown away, never trained on.

mod common;

use std::time::Duration;

use common::Consortium;
use site_agent::client::Client;
use site_agent::config::SiteConfig;

#[test]
fn model_download_resumes_and_rejects_a_foreign_prefix() {
    let mut consortium = Consortium::init();
    let bundle = consortium.add_site("site-a", &consortium.dir.path().join("no-data"));
    consortium.aggregator(&["job", "create", "--phase", "pretrain", "--rounds", "1"]);
    consortium.serve();
    let config = SiteConfig::load(&bundle.join("site.toml")).expect("site.toml");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = Client::new(&config).expect("client");
        let work = loop {
            if let Some(work) = client
                .poll(Duration::from_secs(5))
                .await
                .expect("poll")
                .work
            {
                break work;
            }
        };
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
