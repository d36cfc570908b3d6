//! The predictor's answer as a DICOM Comprehensive Structured Report, so a
//! PACS files it with the study it was made on and shows it to radiologists.
//!
//! The SR copies the Patient and General Study attributes of the input (a
//! PACS files by them), references every input image in the Current Requested
//! Procedure Evidence Sequence, and states in its text that it is not for
//! diagnostic use. Codes that DICOM (DCM), LOINC (LN) and UCUM define are used
//! where they exist; fedslice's own concepts use the private scheme `99FEDSLICE`.

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use super::predict::{DISCLAIMER, Prediction};
use crate::data::dicom::{self, DicomError, new_uid};

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
    #[error("{path}: cannot write the report: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Attributes copied from the input so the PACS files the SR with its study.
const COPIED: [(Tag, VR); 11] = [
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::STUDY_DESCRIPTION, VR::LO),
];

/// Type 2 attributes: present, possibly empty.
const TYPE2: [Tag; 9] = [
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
];

/// What `write_sr` produced.
#[derive(Debug, Clone)]
pub struct WrittenReport {
    pub path: PathBuf,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
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

    // Every input image, by SOP class and instance, for the evidence sequence.
    let mut referenced = Vec::with_capacity(series.files.len());
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
        ) {
            referenced.push(InMemDicomObject::from_element_iter([
                text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &class),
                text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &instance),
            ]));
        }
    }

    let sop_uid = new_uid();
    let series_uid = new_uid();
    let (date, time) = now_da_tm();
    let mut obj = InMemDicomObject::from_element_iter([
        text(tags::SOP_CLASS_UID, VR::UI, uids::COMPREHENSIVE_SR_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &series.study_instance_uid),
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
                text(tags::STUDY_INSTANCE_UID, VR::UI, &series.study_instance_uid),
                sequence(
                    tags::REFERENCED_SERIES_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([
                        text(
                            tags::SERIES_INSTANCE_UID,
                            VR::UI,
                            &series.series_instance_uid,
                        ),
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
    for (tag, vr) in COPIED {
        let value = header_string(&source, tag);
        copied_non_ascii |= value.as_ref().is_some_and(|v| !v.is_ascii());
        match value {
            Some(v) => obj.put(text(tag, vr, &v)),
            None if TYPE2.contains(&tag) => obj.put(text(tag, vr, "")),
            None => None,
        };
    }

    let summary = format!(
        "{DISCLAIMER} Automated result of the fedslice ACL-tear classifier on series {} ({} slices): \
         probability of an anterior cruciate ligament tear {:.3}; {} at the model's threshold {:.3}. \
         A radiologist must read the exam.",
        series.series_instance_uid,
        prediction.input.slices_used,
        prediction.probability,
        if prediction.positive {
            "positive"
        } else {
            "negative"
        },
        prediction.threshold,
    );
    let content = vec![
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
    Ok(WrittenReport {
        path: out.to_path_buf(),
        sop_instance_uid: sop_uid,
        series_instance_uid: series_uid,
    })
}
