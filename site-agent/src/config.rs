//! `site.toml`: what a site agent needs to run. Relative paths are resolved
//! against the file's folder, so a bundle can be moved as a whole.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fedslice::process::Permanent;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The site's name (as enrolled). It names the site in local logs and
    /// seeds its random streams, so a rerun trains identically.
    #[serde(default)]
    pub site: Option<String>,
    pub aggregator_url: String,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// This site's exams (MRNet or exam-folder layout).
    pub data: PathBuf,
    /// The plane the consortium's task reads (sagittal unless the task says otherwise).
    #[serde(default)]
    pub plane: fedslice::data::plane::Plane,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_cache")]
    pub cache_dir: PathBuf,
    /// `[privacy]`: the hospital's own minimum, whatever jobs the consortium
    /// creates (`require_dp`, `max_epsilon`).
    #[serde(default)]
    pub privacy: fedslice::privacy::SitePolicy,
}

fn default_device() -> String {
    "flex".into()
}

fn default_cache() -> PathBuf {
    PathBuf::from("cache")
}

/// What `aggregator site add` writes for `data`; the site must replace it.
pub const DATA_PLACEHOLDER: &str = "/path/to/this/site/knee-mri";

impl SiteConfig {
    /// Reads `path`; any failure is a [`Permanent::Config`] error.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_inner(path).context(Permanent::Config)
    }

    /// `data` as `site add` left it, which never names a real folder.
    pub fn data_is_placeholder(&self) -> bool {
        self.data == Path::new(DATA_PLACEHOLDER)
    }

    /// The placeholder check as an error that names the fix.
    pub fn ensure_data_set(&self, path: &Path) -> anyhow::Result<()> {
        if self.data_is_placeholder() {
            return Err(anyhow::anyhow!(
                "`data` in {} still has its placeholder value {DATA_PLACEHOLDER}: set it to this site's knee MRI folder",
                path.display()
            ))
            .context(Permanent::Config);
        }
        Ok(())
    }

    fn load_inner(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: SiteConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        check_aggregator_url(&config.aggregator_url)
            .with_context(|| format!("{}: aggregator_url", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.ca_cert,
            &mut config.cert,
            &mut config.key,
            &mut config.data,
            &mut config.cache_dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.aggregator_url = config.aggregator_url.trim_end_matches('/').to_string();
        Ok(config)
    }
}

/// The agent speaks only HTTPS to the aggregator (the client also refuses
/// any other scheme and every redirect): an `http://` URL would send the
/// site's updates in the clear, so it is refused at load, not at first use.
fn check_aggregator_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url)
        .with_context(|| format!("`{url}` is not a URL (expected https://HOST:PORT)"))?;
    anyhow::ensure!(
        parsed.scheme() == "https",
        "must be an https:// URL, got `{url}`: the agent never sends updates without TLS"
    );
    anyhow::ensure!(
        parsed.host_str().is_some_and(|h| !h.is_empty()),
        "`{url}` names no host"
    );
    anyhow::ensure!(
        parsed.username().is_empty() && parsed.password().is_none(),
        "`{url}` holds a user name or password: the site authenticates with its certificate only"
    );
    anyhow::ensure!(
        parsed.query().is_none() && parsed.fragment().is_none(),
        "`{url}` has a query or fragment: give the aggregator's base URL only"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(url: &str) -> anyhow::Result<SiteConfig> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            format!(
                "aggregator_url = \"{url}\"\nca_cert = \"ca.pem\"\ncert = \"site.pem\"\nkey = \"site.key\"\ndata = \"data\"\n"
            ),
        )
        .expect("write site.toml");
        SiteConfig::load(&path)
    }

    #[test]
    fn only_a_plain_https_aggregator_url_loads() {
        let config = load("https://aggregator.example.org:8443/").expect("https loads");
        assert_eq!(config.aggregator_url, "https://aggregator.example.org:8443");
        for (url, why) in [
            (
                "http://aggregator.example.org:8443",
                "must be an https:// URL",
            ),
            ("HTTP://aggregator.example.org", "must be an https:// URL"),
            ("ftp://aggregator.example.org", "must be an https:// URL"),
            ("aggregator.example.org:8443", "https:// URL"),
            ("https://", "not a URL"),
            (
                "https://user:secret@aggregator.example.org",
                "user name or password",
            ),
            (
                "https://aggregator.example.org/?next=http://x",
                "query or fragment",
            ),
        ] {
            let error = load(url).expect_err(url);
            let shown = format!("{error:#}");
            assert!(
                shown.contains("aggregator_url") && shown.contains(why),
                "{url}: {shown}"
            );
            assert_eq!(
                fedslice::process::permanent_kind(&error),
                Some(Permanent::Config),
                "{url}"
            );
        }
    }
}
