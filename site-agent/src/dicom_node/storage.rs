//! Where received instances go on disk, and how they get there.
//!
//! ```text
//! STORAGE/.incoming/<random>.partial          being received
//! STORAGE/<study key>/<series key>/<instance>.dcm   received images
//! STORAGE/<study key>/<series key>.fedslice/  result.json | error.json, fedslice-sr.dcm, sent.json
//! ```
//!
//! Folder names are digests (see [`fedslice::data::dicom::SeriesKey`]), never
//! header values; an instance's file name is its SOP Instance UID only when
//! that is a well-formed UID (digits and dots), else a digest of it. Results
//! sit in a sibling folder so a re-run never mistakes the SR for an input.
//! An instance is written under `.incoming` while it arrives (Part 10: meta
//! group, then the data set bytes exactly as received), checked, and renamed
//! into its series folder, so a scan never sees half a file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use fedslice::data::dicom::{self as fdicom, SeriesKey};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::dimse::status;

pub const INCOMING: &str = ".incoming";
pub const RESULT_SUFFIX: &str = ".fedslice";
pub const RESULT_JSON: &str = "result.json";
pub const ERROR_JSON: &str = "error.json";
pub const SENT_JSON: &str = "sent.json";
pub const SR_FILE: &str = "fedslice-sr.dcm";

/// A non-reversible name for a study, safe for paths and logs.
pub fn study_key(study_instance_uid: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"fedslice-study-v1\0");
    h.update(study_instance_uid.as_bytes());
    hex::encode(&h.finalize()[..6])
}

/// Whether `uid` is a well-formed UID (PS3.5 9.1): components of digits
/// without leading zeros, separated by single dots, at most 64 characters.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

/// The file name for an instance: its UID when well formed, else a digest.
pub fn instance_file_name(sop_instance_uid: &str) -> String {
    if is_valid_uid(sop_instance_uid) {
        format!("{sop_instance_uid}.dcm")
    } else {
        let digest = Sha256::digest(sop_instance_uid.as_bytes());
        format!("x{}.dcm", hex::encode(&digest[..16]))
    }
}

/// One series' folders.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesPlace {
    pub study_key: String,
    pub series_key: String,
    /// The received images (the predictor's input).
    pub dir: PathBuf,
    /// result.json / error.json, the SR, sent.json.
    pub result_dir: PathBuf,
}

impl SeriesPlace {
    pub fn new(root: &Path, study_key: &str, series_key: &str) -> Self {
        let study = root.join(study_key);
        Self {
            study_key: study_key.to_owned(),
            series_key: series_key.to_owned(),
            dir: study.join(series_key),
            result_dir: study.join(format!("{series_key}{RESULT_SUFFIX}")),
        }
    }
}

/// A data set being received into `.incoming`; removed on drop unless filed.
pub struct Incoming {
    path: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    pub bytes: u64,
}

impl Incoming {
    /// Creates the partial file and writes preamble, magic and file meta group.
    pub async fn create(
        root: &Path,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
        calling_ae: &str,
    ) -> anyhow::Result<Self> {
        let mut meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(sop_instance)
            .transfer_syntax(transfer_syntax);
        if is_valid_ae_title(calling_ae) {
            meta = meta.source_application_entity_title(calling_ae);
        }
        let meta = meta.build().context("building the file meta group")?;
        let mut head = vec![0u8; 128];
        head.extend_from_slice(b"DICM");
        meta.write(&mut head)
            .context("encoding the file meta group")?;

        let dir = root.join(INCOMING);
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{:016x}.partial", rand::random::<u64>()));
        let file = tokio::fs::File::create(&path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        let mut incoming = Self {
            path,
            file: Some(tokio::io::BufWriter::with_capacity(256 * 1024, file)),
            bytes: 0,
        };
        incoming.write(&head).await?;
        incoming.bytes = 0;
        Ok(incoming)
    }

    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let file = self.file.as_mut().context("file already closed")?;
        file.write_all(data)
            .await
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Flushes and syncs: the data is on disk before success is answered.
    pub async fn close(&mut self) -> anyhow::Result<PathBuf> {
        let mut file = self.file.take().context("file already closed")?;
        file.flush()
            .await
            .with_context(|| format!("writing {}", self.path.display()))?;
        file.get_mut()
            .sync_all()
            .await
            .with_context(|| format!("syncing {}", self.path.display()))?;
        Ok(self.path.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Filed instances were renamed away; anything left is partial.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a C-STORE said it carries.
#[derive(Debug, Clone)]
pub struct Announced {
    pub sop_class: String,
    pub sop_instance: String,
}

/// Why an instance was not filed: a DIMSE status and a reason (no identifiers).
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// Checks a received partial file and renames it into its series folder.
/// Blocking (parses the header): call from a blocking thread.
pub fn file_instance(
    root: &Path,
    partial: &Path,
    announced: &Announced,
) -> Result<SeriesPlace, Refusal> {
    let obj = fdicom::open_header(partial).map_err(|e| {
        refuse(
            status::CANNOT_UNDERSTAND,
            format!("unreadable data set: {e}"),
        )
    })?;
    let text = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches(['\0', ' ']).to_owned())
            .filter(|s| !s.is_empty())
    };
    let (Some(class), Some(instance)) = (text(tags::SOP_CLASS_UID), text(tags::SOP_INSTANCE_UID))
    else {
        return Err(refuse(
            status::DATA_SET_MISMATCH,
            "the data set lacks SOP Class or SOP Instance UID",
        ));
    };
    if class != announced.sop_class || instance != announced.sop_instance {
        return Err(refuse(
            status::DATA_SET_MISMATCH,
            "the data set's SOP Class/Instance UID differ from the C-STORE request's",
        ));
    }
    let (Some(study), Some(series)) = (
        text(tags::STUDY_INSTANCE_UID),
        text(tags::SERIES_INSTANCE_UID),
    ) else {
        return Err(refuse(
            status::DATA_SET_MISMATCH,
            "the data set lacks Study or Series Instance UID",
        ));
    };
    let place = SeriesPlace::new(
        root,
        &study_key(&study),
        SeriesKey::of_uids(&study, &series).as_str(),
    );
    let out = place.dir.join(instance_file_name(&instance));
    std::fs::create_dir_all(&place.dir)
        .and_then(|()| std::fs::rename(partial, &out))
        .map_err(|e| {
            refuse(
                status::OUT_OF_RESOURCES,
                format!("cannot file the instance in {}: {e}", place.dir.display()),
            )
        })?;
    Ok(place)
}

/// An AE title (PS3.5 VR AE): 1–16 characters of printable ASCII without
/// backslash, not only spaces.
pub fn is_valid_ae_title(ae: &str) -> bool {
    !ae.trim().is_empty()
        && ae.len() <= 16
        && ae.bytes().all(|b| (0x20..0x7F).contains(&b) && b != b'\\')
}

/// Removes partial files a previous run left behind.
pub fn clean_incoming(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root.join(INCOMING)) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "partial"))
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .filter_map(|m| m.modified().ok())
        .max()
}

/// Series folders whose images are newer than their result (or that have
/// none): received before a restart but never (or not fully) predicted.
pub fn unfinished_series(root: &Path) -> Vec<SeriesPlace> {
    let mut out = Vec::new();
    let Ok(studies) = std::fs::read_dir(root) else {
        return out;
    };
    for study in studies.filter_map(Result::ok) {
        let study_name = study.file_name().to_string_lossy().into_owned();
        if study_name.starts_with('.') || !study.path().is_dir() {
            continue;
        }
        let Ok(series) = std::fs::read_dir(study.path()) else {
            continue;
        };
        for s in series.filter_map(Result::ok) {
            let name = s.file_name().to_string_lossy().into_owned();
            if name.ends_with(RESULT_SUFFIX) || !s.path().is_dir() {
                continue;
            }
            let place = SeriesPlace::new(root, &study_name, &name);
            let Some(images) = newest_mtime(&place.dir) else {
                continue;
            };
            let done = [RESULT_JSON, ERROR_JSON]
                .iter()
                .filter_map(|f| std::fs::metadata(place.result_dir.join(f)).ok())
                .filter_map(|m| m.modified().ok())
                .max();
            if done.is_none_or(|d| d < images) {
                out.push(place);
            }
        }
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_become_file_names_only_when_well_formed() {
        assert_eq!(
            instance_file_name("1.2.840.113619.2.1"),
            "1.2.840.113619.2.1.dcm"
        );
        for bad in [
            "../../etc/passwd",
            "1..2",
            "1.02",
            "",
            "1.2/3",
            "1.2.3 ",
            ".1",
        ] {
            let name = instance_file_name(bad);
            assert!(
                name.starts_with('x') && name.len() == 37,
                "{bad:?} → {name}"
            );
        }
        assert!(!is_valid_uid(&"1".repeat(65)));
    }

    #[test]
    fn keys_are_digests() {
        let k = study_key("1.2.3");
        assert_eq!(k.len(), 12);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(k, study_key("1.2.4"));
    }

    #[test]
    fn ae_titles() {
        assert!(is_valid_ae_title("FEDSLICE"));
        assert!(!is_valid_ae_title(""));
        assert!(!is_valid_ae_title("    "));
        assert!(!is_valid_ae_title("A\\B"));
        assert!(!is_valid_ae_title("SEVENTEEN-CHARS-X"));
    }
}
