//! One association with a sending node (PACS, router, modality): negotiation
//! by dicom-ul, then C-ECHO and C-STORE until release or abort.
//!
//! The data set of a C-STORE is streamed to a partial file as its fragments
//! arrive (memory stays bounded by the PDU size), checked, and filed; the
//! response carries success or the DIMSE failure status that says why not.
//! Anything that breaks the protocol (P-DATA on a presentation context that
//! was not accepted, a data set without a request, an unreadable command)
//! ends the association with an A-ABORT; the node carries on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_dictionary_std::uids;
use dicom_ul::Pdu;
use dicom_ul::association::server::{AcceptCalledAeTitle, DefaultNegotiation};
use dicom_ul::association::{
    Association, AsyncServerAssociation, Error as UlError, ServerAssociationOptions,
};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource, PDataValue, PDataValueType, PresentationContextNegotiated,
    PresentationContextResultReason,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::dimse::{self, status};
use super::error_chain;
use super::storage::{self, Announced, Incoming, Refusal, SeriesPlace};

/// Storage SOP classes this node accepts: MR images, classic and enhanced.
pub const STORAGE_CLASSES: [&str; 2] = [uids::MR_IMAGE_STORAGE, uids::ENHANCED_MR_IMAGE_STORAGE];
/// Native encodings only: the predictor reads them without codecs of the sender's choosing.
pub const TRANSFER_SYNTAXES: [&str; 2] = [
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
];
/// A command set is a few hundred bytes; anything this large is not one.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

pub type ScpOptions = ServerAssociationOptions<'static, AcceptCalledAeTitle, DefaultNegotiation>;

/// What the association tasks share.
pub struct Context {
    pub ae_title: String,
    pub storage: PathBuf,
    pub arrivals: mpsc::Sender<Arrival>,
}

/// An instance filed in a series folder.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub place: SeriesPlace,
    pub at: Instant,
}

/// The negotiation every association gets: our AE title only, Verification
/// and MR storage, Explicit then Implicit VR Little Endian, PDUs no larger
/// than `max_pdu` (strict), and `timeout` on every read and write.
pub fn scp_options(ae_title: &str, max_pdu: u32, timeout: Duration) -> ScpOptions {
    let mut options = ServerAssociationOptions::new()
        .accept_called_ae_title()
        .ae_title(ae_title.to_owned())
        .max_pdu_length(max_pdu)
        .strict(true)
        .promiscuous(false)
        .read_timeout(timeout)
        .write_timeout(timeout)
        .with_abstract_syntax(uids::VERIFICATION);
    for class in STORAGE_CLASSES {
        options = options.with_abstract_syntax(class);
    }
    for ts in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(ts);
    }
    options
}

/// Whether the abort signal has fired (or its sender is gone).
async fn aborted(abort: &mut watch::Receiver<bool>) {
    loop {
        if *abort.borrow_and_update() {
            return;
        }
        if abort.changed().await.is_err() {
            return;
        }
    }
}

/// Serves one TCP connection until the association ends.
pub async fn serve(
    options: Arc<ScpOptions>,
    ctx: Arc<Context>,
    socket: TcpStream,
    peer: SocketAddr,
    mut abort: watch::Receiver<bool>,
) {
    let established = tokio::select! {
        biased;
        _ = aborted(&mut abort) => return,
        r = options.establish_async(socket) => r,
    };
    let mut assoc = match established {
        Ok(a) => a,
        Err(UlError::Rejected { association_rj, .. }) => {
            tracing::warn!(%peer, "association rejected: {}", association_rj.source);
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, "association not established: {}", error_chain(&e));
            return;
        }
    };
    let contexts: Vec<PresentationContextNegotiated> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .cloned()
        .collect();
    let calling = assoc.peer_ae_title().to_owned();
    tracing::info!(
        %peer,
        calling_ae = %calling,
        accepted = contexts.len(),
        proposed = assoc.presentation_contexts().len(),
        max_pdu = assoc.peer_max_pdu_length(),
        "association accepted"
    );
    let mut session = Session {
        ctx,
        peer,
        calling,
        contexts,
        command: Vec::new(),
        command_pc: None,
        store: None,
        stored: 0,
        refused: 0,
    };
    loop {
        let received = tokio::select! {
            biased;
            _ = aborted(&mut abort) => {
                tracing::warn!(%peer, calling_ae = %session.calling, "shutting down: aborting the association");
                let _ = assoc.abort().await;
                break;
            }
            r = assoc.receive() => r,
        };
        match received {
            Ok(Pdu::PData { data }) => {
                if let Err(why) = session.pdata(&mut assoc, data).await {
                    tracing::warn!(%peer, calling_ae = %session.calling, "aborting the association: {why}");
                    let _ = assoc.abort().await;
                    break;
                }
            }
            Ok(Pdu::ReleaseRQ) => {
                if session.store.is_some() {
                    tracing::warn!(%peer, "released in the middle of a C-STORE; the partial instance is discarded");
                }
                if let Err(e) = assoc.send(&Pdu::ReleaseRP).await {
                    tracing::debug!(%peer, "sending A-RELEASE-RP: {}", error_chain(&e));
                }
                break;
            }
            Ok(Pdu::AbortRQ { source }) => {
                tracing::warn!(%peer, calling_ae = %session.calling, "association aborted by the peer: {source:?}");
                break;
            }
            Ok(other) => {
                tracing::warn!(%peer, "unexpected {}; aborting the association", other.short_description());
                let _ = assoc.abort().await;
                break;
            }
            Err(UlError::ConnectionClosed { .. }) => {
                tracing::warn!(%peer, "connection closed without A-RELEASE");
                break;
            }
            Err(e) => {
                tracing::warn!(%peer, "aborting the association: {}", error_chain(&e));
                let _ = assoc.abort().await;
                break;
            }
        }
    }
    tracing::info!(
        %peer,
        calling_ae = %session.calling,
        stored = session.stored,
        refused = session.refused,
        "association ended"
    );
}

struct PendingStore {
    pc_id: u8,
    message_id: u16,
    announced: Announced,
    incoming: Option<Incoming>,
    refusal: Option<Refusal>,
    received: u64,
}

struct Session {
    ctx: Arc<Context>,
    peer: SocketAddr,
    calling: String,
    contexts: Vec<PresentationContextNegotiated>,
    command: Vec<u8>,
    command_pc: Option<u8>,
    store: Option<PendingStore>,
    stored: usize,
    refused: usize,
}

type Assoc = AsyncServerAssociation<TcpStream>;

impl Session {
    async fn pdata(&mut self, assoc: &mut Assoc, values: Vec<PDataValue>) -> Result<(), String> {
        for pdv in values {
            let Some(pc) = self
                .contexts
                .iter()
                .find(|pc| pc.id == pdv.presentation_context_id)
                .cloned()
            else {
                return Err(format!(
                    "P-DATA on presentation context {}, which was not accepted",
                    pdv.presentation_context_id
                ));
            };
            match pdv.value_type {
                PDataValueType::Command => {
                    if self.store.is_some() {
                        return Err(
                            "a command arrived before the previous data set was complete".into(),
                        );
                    }
                    if self.command_pc.is_some_and(|id| id != pc.id) {
                        return Err("command fragments on two presentation contexts".into());
                    }
                    self.command_pc = Some(pc.id);
                    self.command.extend_from_slice(&pdv.data);
                    if self.command.len() > MAX_COMMAND_BYTES {
                        return Err(format!("command set over {MAX_COMMAND_BYTES} bytes"));
                    }
                    if pdv.is_last {
                        let bytes = std::mem::take(&mut self.command);
                        self.command_pc = None;
                        self.command(assoc, &pc, bytes).await?;
                    }
                }
                PDataValueType::Data => {
                    let Some(store) = self.store.as_mut() else {
                        return Err("a data set arrived without a C-STORE request".into());
                    };
                    if store.pc_id != pc.id {
                        return Err(
                            "data set fragments on another presentation context than its request"
                                .into(),
                        );
                    }
                    store.received += pdv.data.len() as u64;
                    if store.refusal.is_none() {
                        if store.received > fedslice::data::dicom::MAX_FILE_BYTES {
                            store.incoming = None;
                            store.refusal = Some(Refusal {
                                status: status::OUT_OF_RESOURCES,
                                reason: format!(
                                    "data set over {} bytes",
                                    fedslice::data::dicom::MAX_FILE_BYTES
                                ),
                            });
                        } else if let Some(incoming) = store.incoming.as_mut()
                            && let Err(e) = incoming.write(&pdv.data).await
                        {
                            store.incoming = None;
                            store.refusal = Some(Refusal {
                                status: status::OUT_OF_RESOURCES,
                                reason: format!("{e:#}"),
                            });
                        }
                    }
                    if pdv.is_last {
                        self.finish_store(assoc).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn command(
        &mut self,
        assoc: &mut Assoc,
        pc: &PresentationContextNegotiated,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        // Parsing is CPU work on bytes the peer chose; it must not stall the
        // other associations sharing this worker.
        let cmd = tokio::task::spawn_blocking(move || dimse::parse(&bytes))
            .await
            .map_err(|e| format!("parsing the command set failed: {e}"))?
            .map_err(|e| format!("{e:#}"))?;
        let message_id = cmd
            .message_id
            .ok_or_else(|| format!("command {:04X}H without a Message ID", cmd.field))?;
        match cmd.field {
            dimse::C_ECHO_RQ => {
                let rsp = dimse::response(
                    dimse::C_ECHO_RSP,
                    message_id,
                    Some(uids::VERIFICATION),
                    None,
                    status::SUCCESS,
                    None,
                )
                .map_err(|e| format!("{e:#}"))?;
                tracing::info!(peer = %self.peer, calling_ae = %self.calling, "C-ECHO");
                send_command(assoc, pc.id, rsp).await
            }
            dimse::C_STORE_RQ => {
                let (Some(class), Some(instance)) = (cmd.sop_class, cmd.sop_instance) else {
                    return Err("C-STORE request without Affected SOP Class/Instance UID".into());
                };
                if !cmd.has_data_set {
                    return Err("C-STORE request that announces no data set".into());
                }
                let mut refusal = None;
                let mut incoming = None;
                if !STORAGE_CLASSES.contains(&class.as_str()) || class != pc.abstract_syntax {
                    refusal = Some(Refusal {
                        status: status::SOP_CLASS_NOT_SUPPORTED,
                        reason: "SOP class is not that of the presentation context, or not MR image storage".into(),
                    });
                } else {
                    match Incoming::create(
                        &self.ctx.storage,
                        &class,
                        &instance,
                        &pc.transfer_syntax,
                        &self.calling,
                    )
                    .await
                    {
                        Ok(i) => incoming = Some(i),
                        Err(e) => {
                            refusal = Some(Refusal {
                                status: status::OUT_OF_RESOURCES,
                                reason: format!("{e:#}"),
                            })
                        }
                    }
                }
                self.store = Some(PendingStore {
                    pc_id: pc.id,
                    message_id,
                    announced: Announced {
                        sop_class: class,
                        sop_instance: instance,
                    },
                    incoming,
                    refusal,
                    received: 0,
                });
                Ok(())
            }
            dimse::C_CANCEL_RQ => Ok(()),
            field if field & 0x8000 != 0 => Err(format!("unexpected response {field:04X}H")),
            field if cmd.has_data_set => Err(format!(
                "unsupported operation {field:04X}H with a data set"
            )),
            field => {
                tracing::warn!(peer = %self.peer, "unsupported operation {field:04X}H");
                let rsp = dimse::response(
                    field | 0x8000,
                    message_id,
                    cmd.sop_class.as_deref(),
                    None,
                    status::UNRECOGNIZED_OPERATION,
                    Some("only C-ECHO and C-STORE are supported"),
                )
                .map_err(|e| format!("{e:#}"))?;
                send_command(assoc, pc.id, rsp).await
            }
        }
    }

    async fn finish_store(&mut self, assoc: &mut Assoc) -> Result<(), String> {
        let Some(mut store) = self.store.take() else {
            return Ok(());
        };
        let outcome: Result<SeriesPlace, Refusal> =
            match (store.refusal.take(), store.incoming.as_mut()) {
                (Some(refusal), _) => Err(refusal),
                (None, None) => Err(Refusal {
                    status: status::OUT_OF_RESOURCES,
                    reason: "no file to receive into".into(),
                }),
                (None, Some(incoming)) => match incoming.close().await {
                    Err(e) => Err(Refusal {
                        status: status::OUT_OF_RESOURCES,
                        reason: format!("{e:#}"),
                    }),
                    Ok(partial) => {
                        let root = self.ctx.storage.clone();
                        let announced = store.announced.clone();
                        tokio::task::spawn_blocking(move || {
                            storage::file_instance(&root, &partial, &announced)
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Err(Refusal {
                                status: status::OUT_OF_RESOURCES,
                                reason: format!("filing the instance failed: {e}"),
                            })
                        })
                    }
                },
            };
        // Removes the partial file if it was not filed.
        drop(store.incoming.take());
        let (code, comment) = match outcome {
            Ok(place) => {
                self.stored += 1;
                tracing::debug!(
                    peer = %self.peer,
                    series = %place.series_key,
                    bytes = store.received,
                    "stored an instance"
                );
                // The scheduler is gone only at shutdown; the series is picked up on restart.
                let _ = self
                    .ctx
                    .arrivals
                    .send(Arrival {
                        place,
                        at: Instant::now(),
                    })
                    .await;
                (status::SUCCESS, None)
            }
            Err(refusal) => {
                self.refused += 1;
                tracing::warn!(
                    peer = %self.peer,
                    calling_ae = %self.calling,
                    status = format!("{:04X}H", refusal.status),
                    "C-STORE refused: {}",
                    refusal.reason
                );
                (refusal.status, Some(refusal.reason))
            }
        };
        let rsp = dimse::response(
            dimse::C_STORE_RSP,
            store.message_id,
            Some(&store.announced.sop_class),
            Some(&store.announced.sop_instance),
            code,
            comment.as_deref(),
        )
        .map_err(|e| format!("{e:#}"))?;
        send_command(assoc, store.pc_id, rsp).await
    }
}

async fn send_command(assoc: &mut Assoc, pc_id: u8, data: Vec<u8>) -> Result<(), String> {
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data,
            }],
        })
        .await
        .map_err(|e| format!("sending a response: {}", error_chain(&e)))
}

/// Answers a connection over the association limit: reads its
/// A-ASSOCIATE-RQ and rejects it as transient, local limit exceeded
/// (PS3.8 9.3.4), so the sender retries later.
pub async fn reject_busy(mut socket: TcpStream, peer: SocketAddr, limit: usize) {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            match dicom_ul::read_pdu(&buf[..], 64 * 1024, true) {
                Ok(Some(Pdu::AssociationRQ(_))) => return Some(()),
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) if buf.len() > 64 * 1024 + 6 => return None,
                Ok(None) => {}
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        return;
    }
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut out = Vec::new();
    if dicom_ul::write_pdu(&mut out, &rj).is_ok() {
        let _ = socket.write_all(&out).await;
        let _ = socket.shutdown().await;
    }
    tracing::warn!(%peer, limit, "association rejected: {limit} associations already open (local limit exceeded)");
}
