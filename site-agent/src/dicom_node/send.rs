//! Sending a written SR to `--destination` with C-STORE, as an SCU (blocking:
//! runs on the inference thread, after the report is written).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use dicom_dictionary_std::uids;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{ClientAssociation, Pdu};

use super::dimse;
use super::error_chain;
use super::storage::is_valid_ae_title;

const TIMEOUT: Duration = Duration::from_secs(30);
/// One request per association.
const MESSAGE_ID: u16 = 1;

/// `AE@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Destination {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (ae, address) = s
            .split_once('@')
            .with_context(|| format!("destination {s:?} is not AE@HOST:PORT"))?;
        if !is_valid_ae_title(ae) {
            bail!("destination AE title {ae:?} is not 1–16 printable ASCII characters");
        }
        let (host, port) = address
            .rsplit_once(':')
            .with_context(|| format!("destination {s:?} is not AE@HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("destination {s:?} has no host");
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("destination {s:?}: {port:?} is not a port number"))?;
        Ok(Self {
            ae_title: ae.trim().to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.ae_title, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)
        }
    }
}

/// Sends the SR at `path`; returns the C-STORE-RSP status (the caller
/// decides what a warning or failure means).
pub fn send_sr(
    path: &Path,
    to: &Destination,
    calling_ae: &str,
    max_pdu: u32,
) -> anyhow::Result<u16> {
    let file =
        dicom_object::open_file(path).with_context(|| format!("reading {}", path.display()))?;
    let instance = file
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches(['\0', ' '])
        .to_owned();
    let class = uids::COMPREHENSIVE_SR_STORAGE;

    let mut assoc = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae)
        .called_ae_title(to.ae_title.as_str())
        .with_presentation_context(
            class,
            vec![
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                uids::IMPLICIT_VR_LITTLE_ENDIAN,
            ],
        )
        .max_pdu_length(max_pdu)
        .connection_timeout(TIMEOUT)
        .read_timeout(TIMEOUT)
        .write_timeout(TIMEOUT)
        .establish_with(&to.to_string())
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .with_context(|| format!("opening an association with {to}"))?;
    let result = store(&mut assoc, &file, class, &instance);
    match &result {
        Ok(_) => {
            if let Err(e) = assoc.release() {
                tracing::debug!(destination = %to, "releasing the association: {}", error_chain(&e));
            }
        }
        Err(_) => {
            let _ = assoc.abort();
        }
    }
    result.with_context(|| format!("C-STORE to {to}"))
}

fn store(
    assoc: &mut ClientAssociation<std::net::TcpStream>,
    file: &dicom_object::DefaultDicomObject,
    class: &str,
    instance: &str,
) -> anyhow::Result<u16> {
    let pc = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.abstract_syntax.trim_end_matches('\0') == class)
        .cloned()
        .context("the destination accepted no presentation context for Comprehensive SR Storage")?;
    let ts = TransferSyntaxRegistry
        .get(pc.transfer_syntax.trim_end_matches(['\0', ' ']))
        .with_context(|| format!("unknown transfer syntax {}", pc.transfer_syntax))?;
    let mut data = Vec::new();
    file.write_dataset_with_ts(&mut data, ts)
        .context("encoding the SR in the negotiated transfer syntax")?;

    let command = dimse::store_request(MESSAGE_ID, class, instance)?;
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc.id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        })
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("sending the C-STORE request")?;
    {
        let mut writer = assoc.send_pdata(pc.id);
        writer.write_all(&data).context("sending the data set")?;
        writer.finish().context("sending the data set")?;
    }

    let mut response = Vec::new();
    loop {
        match assoc
            .receive()
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))?
        {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        bail!("the destination sent a data set instead of a C-STORE response");
                    }
                    response.extend_from_slice(&pdv.data);
                    if response.len() > 64 * 1024 {
                        bail!("oversized response");
                    }
                    if pdv.is_last {
                        let rsp = dimse::parse(&response)?;
                        if rsp.field != dimse::C_STORE_RSP {
                            bail!(
                                "expected a C-STORE response, got command {:04X}H",
                                rsp.field
                            );
                        }
                        if rsp.message_id_responded.is_some_and(|id| id != MESSAGE_ID) {
                            bail!("the C-STORE response answers another message");
                        }
                        return rsp.status.context("the C-STORE response has no status");
                    }
                }
            }
            Pdu::AbortRQ { source } => bail!("the destination aborted the association: {source:?}"),
            other => bail!("unexpected {}", other.short_description()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_print() {
        let d: Destination = "PACS@10.0.0.5:104".parse().unwrap();
        assert_eq!(d.ae_title, "PACS");
        assert_eq!(d.host, "10.0.0.5");
        assert_eq!(d.port, 104);
        assert_eq!(d.to_string(), "PACS@10.0.0.5:104");
        let v6: Destination = "PACS@[::1]:11112".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "PACS@[::1]:11112");
        for bad in [
            "PACS",
            "@h:1",
            "PACS@h",
            "PACS@h:0",
            "PACS@:104",
            "A\\B@h:1",
            "PACS@h:99999",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
    }
}
