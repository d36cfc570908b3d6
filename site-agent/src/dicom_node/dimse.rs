//! DIMSE command sets (PS3.7 section 9 and annex E): the small Implicit VR
//! Little Endian data sets that carry C-ECHO and C-STORE requests and their
//! responses, built and parsed with dicom-object.

use anyhow::Context;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use fedslice::data::dicom::{Encoding, check_data_set};

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// C-CANCEL-RQ: only meaningful for C-FIND/C-GET/C-MOVE, ignored here.
pub const C_CANCEL_RQ: u16 = 0x0FFF;
/// Command Data Set Type value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

/// DIMSE status codes (PS3.7 annex C, PS3.4 B.2.3).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: SOP Class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Refused: out of resources (the instance could not be stored).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP Class.
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;

    /// Success or warning (PS3.7 C.1: 0001 and Bxxx are warnings; the
    /// instance was stored).
    pub fn stored(code: u16) -> bool {
        code == SUCCESS || code == 0x0001 || (code & 0xF000) == 0xB000
    }
}

/// The fields of a received command set that this node uses.
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub field: u16,
    pub message_id: Option<u16>,
    pub message_id_responded: Option<u16>,
    pub sop_class: Option<String>,
    pub sop_instance: Option<String>,
    pub has_data_set: bool,
    pub status: Option<u16>,
}

fn uid_text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(['\0', ' ']);
    (!s.is_empty()).then(|| s.to_owned())
}

fn ushort(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    let e = obj.get(tag)?;
    e.uint16().ok().or_else(|| e.to_int::<u16>().ok())
}

/// Parses a complete command set. Blocking (CPU only): call it off the async
/// workers.
pub fn parse(bytes: &[u8]) -> anyhow::Result<Command> {
    // dicom-rs zero-fills a value's declared length before reading it, so a
    // 4-byte length field in a 42-byte command could cost 4 GiB.
    let bytes = check_data_set(bytes, Encoding::IMPLICIT_LE)
        .context("the command set declares more bytes than it holds")?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .context("the command set is not a valid Implicit VR Little Endian data set")?;
    let field = ushort(&obj, tags::COMMAND_FIELD).context("the command has no Command Field")?;
    Ok(Command {
        field,
        message_id: ushort(&obj, tags::MESSAGE_ID),
        message_id_responded: ushort(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO),
        sop_class: uid_text(&obj, tags::AFFECTED_SOP_CLASS_UID),
        sop_instance: uid_text(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
        // Absent counts as "a data set follows" only for requests that need one.
        has_data_set: ushort(&obj, tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET),
        status: ushort(&obj, tags::STATUS),
    })
}

/// A UI value padded to even length with NUL, as PS3.5 6.2 requires.
fn ui(tag: Tag, uid: &str) -> DataElement<InMemDicomObject> {
    let mut v = uid.to_owned();
    if v.len() % 2 == 1 {
        v.push('\0');
    }
    DataElement::new(tag, VR::UI, PrimitiveValue::from(v))
}

fn us(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

/// Encodes `elements` as a command set with its Command Group Length.
fn encode(elements: Vec<DataElement<InMemDicomObject>>) -> anyhow::Result<Vec<u8>> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut obj = InMemDicomObject::from_element_iter(elements);
    let mut body = Vec::new();
    obj.write_dataset_with_ts(&mut body, &ts)
        .context("encoding a command set")?;
    let length = u32::try_from(body.len()).context("command set too long")?;
    obj.put(DataElement::new(
        tags::COMMAND_GROUP_LENGTH,
        VR::UL,
        PrimitiveValue::from(length),
    ));
    let mut out = Vec::with_capacity(body.len() + 12);
    obj.write_dataset_with_ts(&mut out, &ts)
        .context("encoding a command set")?;
    Ok(out)
}

/// Error Comment (LO, at most 64 characters) for a failure status.
fn comment(text: &str) -> DataElement<InMemDicomObject> {
    let mut t: String = text
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
        .take(64)
        .collect();
    if t.len() % 2 == 1 {
        t.push(' ');
    }
    DataElement::new(tags::ERROR_COMMENT, VR::LO, PrimitiveValue::from(t))
}

/// A response (`field` is the response's Command Field) without a data set.
pub fn response(
    field: u16,
    responding_to: u16,
    sop_class: Option<&str>,
    sop_instance: Option<&str>,
    status: u16,
    error_comment: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let mut elements = vec![
        us(tags::COMMAND_FIELD, field),
        us(tags::MESSAGE_ID_BEING_RESPONDED_TO, responding_to),
        us(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
        us(tags::STATUS, status),
    ];
    if let Some(class) = sop_class {
        elements.push(ui(tags::AFFECTED_SOP_CLASS_UID, class));
    }
    if let Some(instance) = sop_instance {
        elements.push(ui(tags::AFFECTED_SOP_INSTANCE_UID, instance));
    }
    if let Some(text) = error_comment.filter(|_| !status::stored(status)) {
        elements.push(comment(text));
    }
    encode(elements)
}

/// A C-STORE-RQ announcing a data set of `sop_class` / `sop_instance`.
pub fn store_request(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
) -> anyhow::Result<Vec<u8>> {
    encode(vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, sop_class),
        us(tags::COMMAND_FIELD, C_STORE_RQ),
        us(tags::MESSAGE_ID, message_id),
        // MEDIUM
        us(tags::PRIORITY, 0x0000),
        // Any value but 0101H: a data set follows.
        us(tags::COMMAND_DATA_SET_TYPE, 0x0000),
        ui(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_request_round_trips_with_group_length() {
        let bytes = store_request(7, "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3").unwrap();
        // (0000,0000) UL, length 4, then the group length value.
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let length = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        assert_eq!(length as usize, bytes.len() - 12);
        let cmd = parse(&bytes).unwrap();
        assert_eq!(cmd.field, C_STORE_RQ);
        assert_eq!(cmd.message_id, Some(7));
        assert_eq!(
            cmd.sop_class.as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.88.33")
        );
        assert_eq!(cmd.sop_instance.as_deref(), Some("1.2.3"));
        assert!(cmd.has_data_set);
    }

    #[test]
    fn failure_response_carries_status_and_comment() {
        let bytes = response(
            C_STORE_RSP,
            3,
            Some("1.2.840.10008.5.1.4.1.1.4"),
            Some("1.2.3.4"),
            status::OUT_OF_RESOURCES,
            Some("disk full"),
        )
        .unwrap();
        let cmd = parse(&bytes).unwrap();
        assert_eq!(cmd.field, C_STORE_RSP);
        assert_eq!(cmd.message_id_responded, Some(3));
        assert_eq!(cmd.status, Some(status::OUT_OF_RESOURCES));
        assert!(!cmd.has_data_set);
        assert!(!status::stored(status::OUT_OF_RESOURCES));
        assert!(status::stored(0xB007));
    }

    /// Implicit VR little endian: tag, 4-byte length, value.
    fn element(tag: (u16, u16), length: u32, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(tag.0.to_le_bytes());
        v.extend(tag.1.to_le_bytes());
        v.extend(length.to_le_bytes());
        v.extend(value);
        v
    }

    fn refused_length(bytes: &[u8]) -> fedslice::data::dicom::LengthPastEnd {
        let e = parse(bytes).unwrap_err();
        match e.downcast::<fedslice::data::dicom::LengthPastEnd>() {
            Ok(refusal) => refusal,
            Err(e) => panic!("parsed without a length check: {e:#}"),
        }
    }

    #[test]
    fn declared_lengths_past_the_command_are_refused_before_parsing() {
        // Security review H1: C-ECHO-RQ fields, then Affected SOP Class UID
        // declaring far more than the command holds. dicom-rs zero-filled the
        // declared length (0x80000000 in the review, 2 GiB resident) before
        // failing; 16 MiB keeps this test cheap if the check is missing.
        let mut bytes = element((0x0000, 0x0100), 2, &C_ECHO_RQ.to_le_bytes());
        bytes.extend(element((0x0000, 0x0110), 2, &1u16.to_le_bytes()));
        bytes.extend(element((0x0000, 0x0002), 0x0100_0000, b"1.2\0"));
        let refusal = refused_length(&bytes);
        assert_eq!((refusal.group, refusal.element), (0x0000, 0x0002));
        assert_eq!(refusal.declared, 0x0100_0000);
        assert_eq!(refusal.remaining, 4);

        // An element of group 0002 is an ordinary implicit element in a
        // command set, not a file meta element with a 2-byte length.
        let mut bytes = element((0x0000, 0x0100), 2, &C_ECHO_RQ.to_le_bytes());
        bytes.extend(element((0x0002, 0x0010), 0x0100_4955, b"1.2\0"));
        let refusal = refused_length(&bytes);
        assert_eq!((refusal.group, refusal.element), (0x0002, 0x0010));
        assert_eq!(refusal.declared, 0x0100_4955);

        // Nested items are checked too.
        let mut item = element((0xFFFE, 0xE000), 0x0100_0000, &[]);
        item.extend([0u8; 8]);
        let mut bytes = element((0x0000, 0x0100), 2, &C_ECHO_RQ.to_le_bytes());
        bytes.extend(element((0x0008, 0x1115), 0xFFFF_FFFF, &item));
        let refusal = refused_length(&bytes);
        assert_eq!((refusal.group, refusal.element), (0xFFFE, 0xE000));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(&[0xFF; 3]).is_err());
        assert!(parse(&[]).is_err());
    }
}
