//! Enrolment: the consortium CA and server certificate at `init`, and a site
//! bundle (key, certificate, CA certificate, example `site.toml`) per `site add`.
//! Private keys are written 0600 from the moment they exist.

use std::path::Path;

use anyhow::Context;
use fedslice::tls::{write_private_file, write_public_file};

use crate::engine::StatePaths;
use crate::pki::{self, Issued, Validity};

pub fn create_pki(
    paths: &StatePaths,
    host: &str,
    extra_sans: &[String],
    ca_days: u32,
) -> anyhow::Result<()> {
    let ca = pki::create_ca("fedslice consortium CA", ca_days)?;
    let mut hosts = vec![host.to_string()];
    hosts.extend(extra_sans.iter().cloned());
    let server = pki::issue_server(&ca, &hosts, ca_days.min(pki::SERVER_CERT_MAX_DAYS))?;
    write_private_file(&paths.ca_key(), ca.key_pem.as_bytes())
        .with_context(|| format!("writing {}", paths.ca_key().display()))?;
    write_public_file(&paths.ca_cert(), ca.cert_pem.as_bytes())
        .with_context(|| format!("writing {}", paths.ca_cert().display()))?;
    write_private_file(&paths.server_key(), server.key_pem.as_bytes())
        .with_context(|| format!("writing {}", paths.server_key().display()))?;
    write_public_file(&paths.server_cert(), server.cert_pem.as_bytes())
        .with_context(|| format!("writing {}", paths.server_cert().display()))?;
    Ok(())
}

pub fn load_ca(paths: &StatePaths) -> anyhow::Result<Issued> {
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    Ok(Issued::from_pem(
        &read(paths.ca_cert())?,
        &read(paths.ca_key())?,
    )?)
}

fn site_toml(name: &str, url: &str) -> String {
    format!(
        r#"# fedslice site agent configuration for site `{name}`.
# Relative paths are relative to this file's folder.

# This site's enrolled name (its certificate's name).
site = "{name}"

# Where the aggregator listens (outbound HTTPS only: this site opens no port).
aggregator_url = "{url}"
ca_cert = "ca.pem"
cert = "site.pem"
key = "site.key"

# This site's knee MRI, in either layout:
#  - MRNet: train/sagittal/NNNN.npy and train-acl.csv (`case,label`);
#  - exam folders: train/<exam>/ (a DICOM study's files) or
#    train/<exam>.nii.gz, with labels.csv (`exam,label`, e.g. `train/knee-017,1`).
# Exams under valid/ never leave the site and are never trained on. Prepared
# slices are cached under cache_dir/prepared, keyed by the files' SHA-256.
data = "/path/to/this/site/knee-mri"

# The plane the task reads: sagittal (default), coronal or axial.
# plane = "sagittal"

# flex (CPU) or wgpu (GPU, if this build has it).
device = "flex"

# Global models, pending uploads and the log of every payload sent.
cache_dir = "cache"
"#
    )
}

pub fn add_site(dir: &Path, name: &str, out: &Path, days: u32) -> anyhow::Result<()> {
    pki::validate_site_name(name)?;
    let paths = StatePaths::new(dir);
    let state = crate::cli::open_state(dir)?;
    if let Some(site) = state.site(name)?
        && site.status == "active"
    {
        anyhow::bail!(
            "site `{name}` is already enrolled; revoke it first to issue a new certificate"
        );
    }
    let url = state
        .meta("url")?
        .context("state folder has no aggregator URL (was `init` interrupted?)")?;
    let ca = load_ca(&paths)?;
    let site = pki::issue_site(&ca, name, Validity::Days(days))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_private_file(&out.join("site.key"), site.key_pem.as_bytes())
        .with_context(|| format!("writing {}", out.join("site.key").display()))?;
    write_public_file(&out.join("site.pem"), site.cert_pem.as_bytes())
        .with_context(|| format!("writing {}", out.join("site.pem").display()))?;
    write_public_file(&out.join("ca.pem"), ca.cert_pem.as_bytes())
        .with_context(|| format!("writing {}", out.join("ca.pem").display()))?;
    write_public_file(&out.join("site.toml"), site_toml(name, &url).as_bytes())
        .with_context(|| format!("writing {}", out.join("site.toml").display()))?;
    // Registered last: a bundle that failed to write leaves no half-enrolled site.
    state.add_site(
        name,
        &site.fingerprint,
        &site.serial,
        site.not_after.unix_timestamp(),
    )?;
    println!("enrolled site `{name}`; bundle in {}", out.display());
    println!(
        "copy the bundle to the site, set `data` in site.toml, then run: site-agent run --config site.toml"
    );
    Ok(())
}
