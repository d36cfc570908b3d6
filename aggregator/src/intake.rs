//! Checks on an update while it streams in (security review M4/M5): the
//! frame (magic, header, kind, declared size) is validated from the first
//! bytes, and the size is bounded by the open round's model, so a body that
//! cannot be an acceptable update is refused before it is spooled, read into
//! memory or kept as a part file.

use fedslice::wire::{self, DecodeLimits, MAX_HEADER_LEN, PayloadKind, WireError};

use crate::engine::{Engine, Rejection};

/// Magic, header length and the longest header: enough to judge the frame.
const HEAD_MAX: usize = 8 + MAX_HEADER_LEN;

/// Unfinished resumable uploads one site may hold at once; starting another
/// deletes its oldest. An honest agent has one update in flight.
pub const MAX_PARTS_PER_SITE: usize = 2;

/// The largest payload a site may send now: an honest update of the open
/// round's model (`DecodeLimits::for_schema`), within the body limit. With
/// no round open, the body limit (a late retry is still answered).
pub(crate) fn upload_limit(engine: &Engine) -> Result<u64, Rejection> {
    let internal = |e: crate::state::StateError| Rejection::Internal(e.to_string());
    let base = {
        let state = engine.state();
        match state.running_job().map_err(internal)? {
            Some(job) => state
                .open_round(&job.id)
                .map_err(internal)?
                .map(|round| round.base_digest),
            None => None,
        }
    };
    let body = engine.max_body_bytes as u64;
    Ok(match base {
        Some(digest) => DecodeLimits::for_schema(engine.schema_of(&digest)?.as_ref())
            .max_payload_bytes
            .min(body),
        None => body,
    })
}

pub(crate) fn too_large(limit: u64) -> Rejection {
    Rejection::TooLarge(usize::try_from(limit).unwrap_or(usize::MAX))
}

/// Judges a payload's frame from its first bytes, fed in order from byte 0.
pub(crate) struct HeadCheck {
    head: Vec<u8>,
    limit: u64,
    done: bool,
}

impl HeadCheck {
    pub fn new(limit: u64) -> Self {
        Self {
            head: Vec::new(),
            limit,
            done: false,
        }
    }

    /// Refuses as soon as the bytes so far cannot start an acceptable update.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Rejection> {
        if self.done {
            return Ok(());
        }
        let room = HEAD_MAX - self.head.len();
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        match wire::decode_header(&self.head) {
            Err(WireError::Truncated { .. }) if self.head.len() < HEAD_MAX => Ok(()),
            Err(e) => Err(Rejection::BadRequest(e.to_string())),
            Ok(header) => {
                self.done = true;
                self.head = Vec::new();
                if header.kind != PayloadKind::Update {
                    return Err(Rejection::BadRequest(
                        "payload is not a model update".into(),
                    ));
                }
                if header.body_len > self.limit {
                    return Err(too_large(self.limit));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_judged_from_the_first_bytes() {
        let mut zeros = HeadCheck::new(1 << 20);
        assert!(matches!(
            zeros.feed(&[0u8; 8]),
            Err(Rejection::BadRequest(m)) if m.contains("not a fedslice payload") || m.contains("magic")
        ));
        // A valid prefix fed a byte at a time is accepted once complete.
        let payload = wire::encode(
            wire::PayloadMeta {
                kind: PayloadKind::Update,
                job: "job-1".into(),
                round: 1,
                base_digest: Some("0".repeat(64)),
                samples: 1,
                metrics: Default::default(),
            },
            &{
                let mut m = wire::TensorMap::new();
                m.insert("w", vec![4], vec![0.0; 4]).expect("insert");
                m
            },
            wire::Dtype::F32,
            3,
        )
        .expect("encode");
        let mut check = HeadCheck::new(1 << 20);
        for byte in &payload {
            check
                .feed(std::slice::from_ref(byte))
                .expect("a valid frame");
        }
        assert!(check.done);
        // The same header declaring more than the limit is refused.
        let mut small = HeadCheck::new(4);
        assert!(matches!(small.feed(&payload), Err(Rejection::TooLarge(4))));
    }
}
