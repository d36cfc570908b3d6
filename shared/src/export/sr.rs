//! The predictor's answer as a DICOM Comprehensive Structured Report, so a
//! PACS files it with the study it was made on and shows it to radiologists.
//!
//! The SR copies the Patient and General Study attributes of the input (a
//! PACS files by them), references every input image in the Current Requested
//! Procedure Evidence Sequence, and states in its text that it is not for
//! diagnostic use. Codes that DICOM (DCM), LOINC (LN) and UCUM define are used
//! where they exist; fedslice's own concepts use the private scheme `99FEDSLICE`.
//!
//! Input headers are outside data (security review M8): every copied value
//! is checked against its VR first ([`crate::data::dicom::vr`]). An invalid
//! Type 2 value is written empty and an invalid Type 3 value left out, never
//! cut to fit. The Study and Series Instance UIDs are Type 1 and the report
//! cannot be filed without them, so an invalid one is replaced by a
//! substitute derived from it and from the series' image UIDs (stable across
//! reruns, never shared by two series), and the report says so; images whose own UIDs
//! are invalid are left out of the evidence, and with none left no report is
//! written. What was changed is logged and returned, without the values.

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use sha2::{Digest, Sha256};

use super::predict::{DISCLAIMER, Prediction};
use crate::data::dicom::{self, DicomError, new_uid, vr};

/// Coding scheme of fedslice's own concepts (PS3.16 8.2: private schemes start with 99).
pub const PRIVATE_SCHEME: &str = "99FEDSLICE";

#[derive(Debug, thiserror::Error)]
pub enum SrError {
    #[error(
        "the prediction was not made on a DICOM series, so there is no study to attach a report to"
    )]
    NotDicom,
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error(
        "none of the {images} input images has a valid SOP Class and SOP Instance UID, so the report could reference none of them"
    )]
    NoValidReference { images: usize },
    #[error("{path}: cannot write the report: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// How an attribute copied from the input must be present in the SR
/// (PS3.3 Patient and General Study modules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Present, empty when unknown or invalid.
    Type2,
    /// Left out when unknown or invalid.
    Type3,
}

/// Attributes copied from the input so the PACS files the SR with its study.
const COPIED: [(Tag, VR, &str, Presence); 11] = [
    (tags::PATIENT_NAME, VR::PN, "PatientName", Presence::Type2),
    (tags::PATIENT_ID, VR::LO, "PatientID", Presence::Type2),
    (
        tags::ISSUER_OF_PATIENT_ID,
        VR::LO,
        "IssuerOfPatientID",
        Presence::Type3,
    ),
    (
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        "PatientBirthDate",
        Presence::Type2,
    ),
    (tags::PATIENT_SEX, VR::CS, "PatientSex", Presence::Type2),
    (tags::STUDY_DATE, VR::DA, "StudyDate", Presence::Type2),
    (tags::STUDY_TIME, VR::TM, "StudyTime", Presence::Type2),
    (
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        "ReferringPhysicianName",
        Presence::Type2,
    ),
    (tags::STUDY_ID, VR::SH, "StudyID", Presence::Type2),
    (
        tags::ACCESSION_NUMBER,
        VR::SH,
        "AccessionNumber",
        Presence::Type2,
    ),
    (
        tags::STUDY_DESCRIPTION,
        VR::LO,
        "StudyDescription",
        Presence::Type3,
    ),
];

/// Patient Sex's enumerated values (PS3.3 C.7.1.1).
const PATIENT_SEX_VALUES: [&str; 3] = ["M", "F", "O"];

/// What `write_sr` produced.
#[derive(Debug, Clone)]
pub struct WrittenReport {
    pub path: PathBuf,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    /// Input values that could not be copied as they were, each with what
    /// was done instead and why (the values themselves are not repeated:
    /// they are patient data).
    pub corrections: Vec<String>,
}

/// A header attribute as text, trailing padding removed; `None` when absent.
fn header_string(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
}

fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::CODE_VALUE, VR::SH, value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        text(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

fn content_item(
    value_type: &str,
    concept: InMemDicomObject,
    value: Vec<DataElement<InMemDicomObject>>,
) -> InMemDicomObject {
    let mut item = InMemDicomObject::from_element_iter([
        text(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        text(tags::VALUE_TYPE, VR::CS, value_type),
        sequence(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![concept]),
    ]);
    for element in value {
        item.put(element);
    }
    item
}

fn text_item(concept: InMemDicomObject, value: &str) -> InMemDicomObject {
    content_item("TEXT", concept, vec![text(tags::TEXT_VALUE, VR::UT, value)])
}

fn num_item(concept: InMemDicomObject, value: f64) -> InMemDicomObject {
    let measured = InMemDicomObject::from_element_iter([
        text(tags::NUMERIC_VALUE, VR::DS, &decimal_string(value)),
        sequence(
            tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
            vec![code("1", "UCUM", "no units")],
        ),
    ]);
    content_item(
        "NUM",
        concept,
        vec![sequence(tags::MEASURED_VALUE_SEQUENCE, vec![measured])],
    )
}

/// A DS value (at most 16 characters) keeping 6 significant decimals.
fn decimal_string(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_owned()
    }
}

/// Today's date and time in UTC as DICOM DA and TM.
fn now_da_tm() -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    (
        format!(
            "{:04}{:02}{:02}",
            now.year(),
            u8::from(now.month()),
            now.day()
        ),
        format!("{:02}{:02}{:02}", now.hour(), now.minute(), now.second()),
    )
}

/// The finding's code: SNOMED CT's ACL tear when positive, fedslice's own
/// "no ACL tear detected" otherwise (no standard code says "not detected by
/// this algorithm").
fn finding_code(positive: bool) -> InMemDicomObject {
    if positive {
        code(
            "239720000",
            "SCT",
            "Tear of anterior cruciate ligament of knee joint",
        )
    } else {
        code("ACLNOTEAR", PRIVATE_SCHEME, "No ACL tear detected")
    }
}

/// Writes the SR for `prediction` to `out`; `prediction` must come from a
/// DICOM input. Returns the new UIDs.
pub fn write_sr(prediction: &Prediction, out: &Path) -> Result<WrittenReport, SrError> {
    let series = prediction.input.series.as_ref().ok_or(SrError::NotDicom)?;
    let first = series.files.first().ok_or(SrError::NotDicom)?;
    let source = dicom::open_header(first)?;

    let mut corrections = Vec::new();
    // Every input image, by SOP class and instance, for the evidence
    // sequence. An image whose UIDs are not valid cannot be referenced by
    // them, and a made-up UID would name an image that does not exist.
    let mut referenced = Vec::with_capacity(series.files.len());
    let mut instances = Vec::with_capacity(series.files.len());
    for file in &series.files {
        let header = if file == first {
            None
        } else {
            Some(dicom::open_header(file)?)
        };
        let obj = header.as_ref().unwrap_or(&source);
        if let (Some(class), Some(instance)) = (
            header_string(obj, tags::SOP_CLASS_UID),
            header_string(obj, tags::SOP_INSTANCE_UID),
        ) && vr::uid(&class).is_ok()
            && vr::uid(&instance).is_ok()
        {
            referenced.push(InMemDicomObject::from_element_iter([
                text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &class),
                text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &instance),
            ]));
            instances.push(instance);
        }
    }
    if referenced.is_empty() {
        return Err(SrError::NoValidReference {
            images: series.files.len(),
        });
    }
    if referenced.len() < series.files.len() {
        corrections.push(format!(
            "{} of {} input images left out of the evidence: SOP Class or Instance UID missing or not valid",
            series.files.len() - referenced.len(),
            series.files.len()
        ));
    }
    instances.sort_unstable();
    let images = instances.join("\\");
    let study_uid = uid_or_substitute(
        "StudyInstanceUID",
        &series.study_instance_uid,
        &images,
        &mut corrections,
    );
    let input_series_uid = uid_or_substitute(
        "SeriesInstanceUID",
        &series.series_instance_uid,
        &images,
        &mut corrections,
    );
    let substituted =
        study_uid != series.study_instance_uid || input_series_uid != series.series_instance_uid;

    let sop_uid = new_uid();
    let series_uid = new_uid();
    let (date, time) = now_da_tm();
    let mut obj = InMemDicomObject::from_element_iter([
        text(tags::SOP_CLASS_UID, VR::UI, uids::COMPREHENSIVE_SR_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study_uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid),
        text(tags::MODALITY, VR::CS, "SR"),
        text(tags::SERIES_NUMBER, VR::IS, "9901"),
        text(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "fedslice ACL tear (research)",
        ),
        sequence(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]),
        text(tags::MANUFACTURER, VR::LO, "fedslice"),
        text(
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            &prediction.model.fedslice_version,
        ),
        text(tags::INSTANCE_NUMBER, VR::IS, "1"),
        text(tags::CONTENT_DATE, VR::DA, &date),
        text(tags::CONTENT_TIME, VR::TM, &time),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, &date),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, &time),
        text(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        text(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        sequence(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]),
        sequence(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                text(tags::STUDY_INSTANCE_UID, VR::UI, &study_uid),
                sequence(
                    tags::REFERENCED_SERIES_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([
                        text(tags::SERIES_INSTANCE_UID, VR::UI, &input_series_uid),
                        sequence(tags::REFERENCED_SOP_SEQUENCE, referenced),
                    ])],
                ),
            ])],
        ),
        text(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        sequence(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("18748-4", "LN", "Diagnostic imaging report")],
        ),
        text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
    ]);
    let mut copied_non_ascii = false;
    for (tag, vr, name, presence) in COPIED {
        let value = header_string(&source, tag).filter(|v| !v.is_empty());
        let checked = value.map(|v| {
            let verdict = if tag == tags::PATIENT_SEX {
                vr::check_enumerated(&v, &PATIENT_SEX_VALUES)
            } else {
                vr::check(vr, &v)
            };
            (v, verdict)
        });
        // An invalid value is dropped whole, never cut to fit: a shortened
        // or split identifier could name another patient or study.
        let kept = match checked {
            Some((v, Ok(()))) => Some(v),
            Some((_, Err(why))) => {
                corrections.push(match presence {
                    Presence::Type2 => format!("{name} written empty: {why}"),
                    Presence::Type3 => format!("{name} left out: {why}"),
                });
                None
            }
            None => None,
        };
        copied_non_ascii |= kept.as_ref().is_some_and(|v| !v.is_ascii());
        match (kept, presence) {
            (Some(v), _) => obj.put(text(tag, vr, &v)),
            (None, Presence::Type2) => obj.put(text(tag, vr, "")),
            (None, Presence::Type3) => None,
        };
    }

    let summary = format!(
        "{DISCLAIMER} Automated result of the fedslice ACL-tear classifier on series {} ({} slices): \
         probability of an anterior cruciate ligament tear {:.3}; {} at the model's threshold {:.3}. \
         A radiologist must read the exam.",
        input_series_uid,
        prediction.input.slices_used,
        prediction.probability,
        if prediction.positive {
            "positive"
        } else {
            "negative"
        },
        prediction.threshold,
    );
    let mut content = vec![
        text_item(code("121106", "DCM", "Comment"), &summary),
        content_item(
            "CODE",
            code("121071", "DCM", "Finding"),
            vec![sequence(
                tags::CONCEPT_CODE_SEQUENCE,
                vec![finding_code(prediction.positive)],
            )],
        ),
        num_item(
            code("ACLTEARP", PRIVATE_SCHEME, "Probability of ACL tear"),
            prediction.probability,
        ),
        num_item(
            code("THRESHOLD", PRIVATE_SCHEME, "Decision threshold"),
            prediction.threshold,
        ),
        text_item(
            code("111001", "DCM", "Algorithm Name"),
            "fedslice ACL-tear classifier",
        ),
        text_item(
            code("111003", "DCM", "Algorithm Version"),
            &format!(
                "fedslice {}; weights sha256 {}",
                prediction.model.fedslice_version, prediction.model.weights_sha256
            ),
        ),
    ];
    if substituted {
        content.push(text_item(
            code("121106", "DCM", "Comment"),
            "The input's Study or Series Instance UID is not a valid DICOM UID, so this report \
             carries a substitute derived from it: a PACS files the report apart from the images.",
        ));
    }
    obj.put(sequence(tags::CONTENT_SEQUENCE, content));
    obj.put(sequence(
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PRIVATE_SCHEME),
            text(tags::CODING_SCHEME_NAME, VR::ST, "fedslice concepts"),
            text(
                tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
                VR::ST,
                "fedslice project",
            ),
        ])],
    ));
    // Copied names may carry accents: declare UTF-8 only then, so plain
    // ASCII reports stay in the default repertoire every reader handles.
    if copied_non_ascii {
        obj.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    }

    let write_err = |reason: String| SrError::Write {
        path: out.to_path_buf(),
        reason,
    };
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::COMPREHENSIVE_SR_STORAGE)
                .media_storage_sop_instance_uid(&sop_uid),
        )
        .map_err(|e| write_err(e.to_string()))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| write_err(e.to_string()))?;
    }
    // Written beside and renamed, so a PACS watching the folder never sees half a file.
    let partial = out.with_extension("partial");
    file.write_to_file(&partial)
        .map_err(|e| write_err(e.to_string()))?;
    std::fs::rename(&partial, out).map_err(|e| write_err(e.to_string()))?;
    for correction in &corrections {
        tracing::warn!(series = %series.series_key, "SR {}: {correction}", out.display());
    }
    Ok(WrittenReport {
        path: out.to_path_buf(),
        sop_instance_uid: sop_uid,
        series_instance_uid: series_uid,
        corrections,
    })
}

/// `value` when it is a valid UID, else a substitute. The SR cannot be
/// filed or reference its series without these UIDs, and an invalid one
/// would make the whole report invalid. The substitute is derived from the
/// attribute, the invalid value and the series' own image UIDs (`images`):
/// a rerun on the same series gets the same one, while two series whose
/// UID is missing or the same junk ("unknown", "n/a") never share one, which
/// could file one patient's report in another patient's study.
fn uid_or_substitute(
    name: &str,
    value: &str,
    images: &str,
    corrections: &mut Vec<String>,
) -> String {
    match vr::uid(value) {
        Ok(()) => value.to_owned(),
        Err(why) => {
            corrections.push(format!(
                "{name} replaced by a substitute derived from it and the series' images: {why}"
            ));
            substitute_uid(&[name, value, images])
        }
    }
}

/// A UID under the UUID root 2.25 whose UUID (version 8) is the start of
/// a SHA-256 of `parts`, each length-prefixed so no two lists read alike.
fn substitute_uid(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"fedslice substitute UID");
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!(
        "2.25.{}",
        uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .as_u128()
    )
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use dicom_object::open_file;

    use super::*;
    use crate::data::dicom::{SeriesWriteOptions, write_dicom_series};
    use crate::data::plane::Plane;
    use crate::data::{Spacing, Volume};
    use crate::export::predict::{InputInfo, ModelInfo, Timing, read_input};

    /// A small sagittal series in `dir`, its header attributes then set to
    /// `values` in every file (the way a PACS export would carry them).
    fn series_with(dir: &Path, values: &[(Tag, VR, String)]) {
        let mut volume = Volume::zeros(6, 16, 16);
        for (i, v) in volume.voxels.iter_mut().enumerate() {
            *v = (i % 251) as f32;
        }
        let spacing = Spacing {
            slice: 3.0,
            row: 0.5,
            col: 0.5,
        };
        let written = write_dicom_series(dir, &volume, spacing, &SeriesWriteOptions::default())
            .expect("write series");
        for file in &written.files {
            let mut obj = open_file(file).expect("reopen");
            for (tag, vr, value) in values {
                obj.put(DataElement::new(
                    *tag,
                    *vr,
                    PrimitiveValue::from(value.as_str()),
                ));
            }
            obj.write_to_file(file).expect("rewrite");
        }
    }

    /// 86 characters: a UID may have 64.
    fn hostile_study_uid() -> String {
        format!("1.2.{}", "3".repeat(82))
    }

    /// The review's M8 series: every copied attribute broken in its own way.
    fn hostile_values() -> Vec<(Tag, VR, String)> {
        vec![
            (
                tags::PATIENT_ID,
                VR::LO,
                format!("{}\\SECOND-ID", "P".repeat(100)),
            ),
            (
                tags::ISSUER_OF_PATIENT_ID,
                VR::LO,
                "ISSUER-A\\ISSUER-B\\ISSUER-C".into(),
            ),
            (
                tags::PATIENT_NAME,
                VR::PN,
                "Evil^Name\u{1b}[31m\r\nFAKE: injected line".into(),
            ),
            (tags::PATIENT_SEX, VR::CS, "not-a-code-string-at-all".into()),
            (tags::PATIENT_BIRTH_DATE, VR::DA, "yesterday".into()),
            (tags::STUDY_DATE, VR::DA, "yesterday".into()),
            (tags::STUDY_TIME, VR::TM, "25:61:99.xyz".into()),
            (
                tags::REFERRING_PHYSICIAN_NAME,
                VR::PN,
                "Dr^Who\u{1b}]0;owned\u{7}".into(),
            ),
            (tags::STUDY_ID, VR::SH, "STUDY\nID".into()),
            (tags::ACCESSION_NUMBER, VR::SH, "A".repeat(40)),
            (
                tags::STUDY_DESCRIPTION,
                VR::LO,
                format!("{}\n", "D".repeat(300)),
            ),
            (tags::STUDY_INSTANCE_UID, VR::UI, hostile_study_uid()),
            (
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                "1.2.3.abc/../../x".into(),
            ),
        ]
    }

    /// What `Predictor::predict_path` would answer on `dir`, without a model.
    fn prediction_on(dir: &Path) -> Prediction {
        let input = read_input(dir, Plane::Sagittal).expect("read the series");
        Prediction {
            probability: 0.25,
            label: "intact".into(),
            positive: false,
            threshold: 0.5,
            slice_scores: vec![0.25; input.volume.depth],
            input: InputInfo {
                path: dir.display().to_string(),
                format: input.format,
                series: input.series.clone(),
                slices_read: input.volume.depth,
                slices_used: input.volume.depth,
            },
            model: ModelInfo {
                bundle: "test".into(),
                weights_sha256: "0".repeat(64),
                bundle_sha256: "0".repeat(64),
                fedslice_version: "0.1.0".into(),
                plane: Plane::Sagittal,
            },
            timing: Timing {
                read_ms: 0.0,
                preprocess_ms: 0.0,
                inference_ms: 0.0,
                total_ms: 0.0,
            },
            disclaimer: DISCLAIMER.into(),
        }
    }

    fn string_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
        header_string(obj, tag)
    }

    /// dciodvfy's error lines, or `None` when dicom3tools is not installed
    /// (a failure instead where FEDSLICE_REQUIRE_DICOM_TOOLS is set).
    fn dciodvfy_errors(file: &Path) -> Option<Vec<String>> {
        let Ok(out) = Command::new("dciodvfy").arg(file).output() else {
            assert!(
                std::env::var_os("FEDSLICE_REQUIRE_DICOM_TOOLS").is_none(),
                "dicom3tools (dciodvfy) is required here"
            );
            eprintln!("SKIPPED dciodvfy: install dicom3tools to run it");
            return None;
        };
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        Some(
            text.lines()
                .filter(|l| l.starts_with("Error"))
                .map(str::to_owned)
                .collect(),
        )
    }

    #[test]
    fn a_hostile_series_gets_a_valid_report_with_its_bad_values_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let series = dir.path().join("odd-series");
        series_with(&series, &hostile_values());
        let prediction = prediction_on(&series);
        let out = dir.path().join("odd-sr.dcm");
        let written = write_sr(&prediction, &out).expect("SR written");

        let sr = open_file(&out).expect("SR reads back");
        for tag in [
            tags::PATIENT_ID,
            tags::PATIENT_NAME,
            tags::PATIENT_SEX,
            tags::PATIENT_BIRTH_DATE,
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::REFERRING_PHYSICIAN_NAME,
            tags::STUDY_ID,
            tags::ACCESSION_NUMBER,
        ] {
            assert_eq!(
                string_of(&sr, tag).as_deref(),
                Some(""),
                "{tag}: Type 2, empty"
            );
        }
        for tag in [tags::ISSUER_OF_PATIENT_ID, tags::STUDY_DESCRIPTION] {
            assert!(
                sr.element_opt(tag).ok().flatten().is_none(),
                "{tag}: Type 3, left out"
            );
        }
        let study = string_of(&sr, tags::STUDY_INSTANCE_UID).expect("study UID");
        assert_eq!(vr::uid(&study), Ok(()), "{study}");
        assert_ne!(study, hostile_study_uid());
        let bytes = std::fs::read(&out).expect("read SR");
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        for forged in [&b"\x1b"[..], b"FAKE", b"SECOND-ID", b"abc/../", b"owned"] {
            assert!(
                !contains(forged),
                "{:?} reached the SR",
                String::from_utf8_lossy(forged)
            );
        }
        assert_eq!(written.corrections.len(), 13, "{:#?}", written.corrections);
        for name in [
            "PatientID written empty",
            "StudyDescription left out",
            "StudyInstanceUID replaced",
        ] {
            assert!(
                written.corrections.iter().any(|c| c.starts_with(name)),
                "{name}: {:#?}",
                written.corrections
            );
        }
        assert!(
            written.corrections.iter().all(|c| !c.contains("PPPP")),
            "corrections must not repeat the values: {:#?}",
            written.corrections
        );

        // A rerun on the same series files its report in the same place.
        let again = write_sr(&prediction, &dir.path().join("again.dcm")).expect("SR");
        let sr2 = open_file(&again.path).expect("reads back");
        assert_eq!(string_of(&sr2, tags::STUDY_INSTANCE_UID), Some(study));

        // The input itself is what dciodvfy calls broken; the report is not.
        let input = &prediction.input.series.as_ref().expect("DICOM").files[0];
        if let (Some(input_errors), Some(errors)) = (dciodvfy_errors(input), dciodvfy_errors(&out))
        {
            assert!(input_errors.len() >= 10, "{input_errors:#?}");
            assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
            eprintln!(
                "dciodvfy: {} errors on an input image, 0 on its SR",
                input_errors.len()
            );
        }
    }

    #[test]
    fn series_without_a_study_uid_are_never_filed_into_one_study() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut filed = Vec::new();
        for name in ["patient-1", "patient-2"] {
            let series = dir.path().join(name);
            series_with(
                &series,
                &[
                    (tags::STUDY_INSTANCE_UID, VR::UI, String::new()),
                    (tags::SERIES_INSTANCE_UID, VR::UI, "unknown".to_owned()),
                ],
            );
            let out = dir.path().join(format!("{name}.dcm"));
            write_sr(&prediction_on(&series), &out).expect("SR written");
            let sr = open_file(&out).expect("SR reads back");
            let study = string_of(&sr, tags::STUDY_INSTANCE_UID).expect("study UID");
            let evidence = sr
                .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
                .expect("evidence");
            let referenced_series = evidence.items().expect("items")[0]
                .element(tags::REFERENCED_SERIES_SEQUENCE)
                .expect("series")
                .items()
                .expect("items")[0]
                .element(tags::SERIES_INSTANCE_UID)
                .expect("series UID")
                .to_str()
                .expect("text")
                .trim_end_matches('\0')
                .to_owned();
            assert_eq!(vr::uid(&study), Ok(()));
            assert_eq!(vr::uid(&referenced_series), Ok(()));
            assert_ne!(study, referenced_series, "study and series got one UID");
            filed.push((study, referenced_series));
        }
        assert_ne!(filed[0].0, filed[1].0, "two patients' reports in one study");
        assert_ne!(filed[0].1, filed[1].1);
    }

    #[test]
    fn valid_values_are_copied_as_they_are_in_utf_8() {
        let dir = tempfile::tempdir().expect("tempdir");
        let series = dir.path().join("series");
        let values = vec![
            (
                tags::SPECIFIC_CHARACTER_SET,
                VR::CS,
                "ISO_IR 192".to_owned(),
            ),
            (tags::PATIENT_NAME, VR::PN, "Müller^Anna".to_owned()),
            (tags::PATIENT_ID, VR::LO, "MRN-0042".to_owned()),
            (tags::PATIENT_SEX, VR::CS, "F".to_owned()),
            (tags::STUDY_DATE, VR::DA, "20240229".to_owned()),
            (tags::STUDY_TIME, VR::TM, "073015.5".to_owned()),
            (
                tags::STUDY_DESCRIPTION,
                VR::LO,
                "MRT Knie rechts".to_owned(),
            ),
        ];
        series_with(&series, &values);
        let prediction = prediction_on(&series);
        let out = dir.path().join("sr.dcm");
        let written = write_sr(&prediction, &out).expect("SR written");
        assert!(written.corrections.is_empty(), "{:#?}", written.corrections);
        let sr = open_file(&out).expect("SR reads back");
        for (tag, _, value) in &values {
            assert_eq!(
                string_of(&sr, *tag).as_deref(),
                Some(value.as_str()),
                "{tag}"
            );
        }
        let series_used = prediction.input.series.as_ref().expect("DICOM");
        assert_eq!(
            string_of(&sr, tags::STUDY_INSTANCE_UID).as_deref(),
            Some(series_used.study_instance_uid.as_str())
        );
        if let Some(errors) = dciodvfy_errors(&out) {
            assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
        }
    }

    #[test]
    fn a_series_whose_images_have_no_valid_uids_gets_no_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let series = dir.path().join("series");
        series_with(
            &series,
            &[(tags::SOP_CLASS_UID, VR::UI, "1.2.840.MR".to_owned())],
        );
        let prediction = prediction_on(&series);
        let out = dir.path().join("sr.dcm");
        match write_sr(&prediction, &out) {
            Err(SrError::NoValidReference { images: 6 }) => {}
            other => panic!("expected NoValidReference, got {other:?}"),
        }
        assert!(!out.exists());
    }
}
