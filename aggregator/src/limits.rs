//! What one connection may hold before it has proved who it is (security
//! review M2/M3): open connections in all, TLS handshakes in progress, and
//! handshakes in progress per source address, each refused at accept time
//! by closing the socket, before any cryptography is spent on it.
//!
//! Handshakes are limited separately from connections because they are the
//! unauthenticated part: a site's connection is held for its long-poll, but
//! a handshake is over in milliseconds unless the peer stalls it on purpose.
//! The per-address cap keeps one host from taking every handshake slot; it
//! is generous enough for the several agents of a hospital behind one NAT.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Longest a connection may sit without sending a complete request head
    /// (new or kept alive), and the longest gap between chunks of a body.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            // Under the usual soft limit of 1024 open files, with room for
            // the database, blobs and the operator listener.
            max_connections: 512,
            max_handshakes: 64,
            max_handshakes_per_ip: 16,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a new connection was closed unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Connections,
    Handshakes,
    HandshakesFromPeer,
}

impl Refused {
    pub fn reason(self, limits: &ConnectionLimits) -> String {
        match self {
            Self::Connections => format!("{} connections already open", limits.max_connections),
            Self::Handshakes => format!(
                "{} TLS handshakes already in progress",
                limits.max_handshakes
            ),
            Self::HandshakesFromPeer => format!(
                "{} TLS handshakes from this address already in progress",
                limits.max_handshakes_per_ip
            ),
        }
    }
}

pub struct Gate {
    pub limits: ConnectionLimits,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Held for the life of a connection.
pub struct ConnectionPermit {
    _slot: OwnedSemaphorePermit,
}

/// Held while the TLS handshake runs.
pub struct HandshakePermit {
    _slot: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Gate {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            per_ip: Arc::default(),
            limits,
        }
    }

    /// Both permits a new connection needs, or why it is turned away.
    pub fn admit(&self, ip: IpAddr) -> Result<(ConnectionPermit, HandshakePermit), Refused> {
        let connection = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| Refused::Connections)?;
        let handshake = Arc::clone(&self.handshakes)
            .try_acquire_owned()
            .map_err(|_| Refused::Handshakes)?;
        {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.limits.max_handshakes_per_ip {
                return Err(Refused::HandshakesFromPeer);
            }
            *n += 1;
        }
        Ok((
            ConnectionPermit { _slot: connection },
            HandshakePermit {
                _slot: handshake,
                ip,
                per_ip: self.per_ip.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(connections: usize, handshakes: usize, per_ip: usize) -> Gate {
        Gate::new(ConnectionLimits {
            max_connections: connections,
            max_handshakes: handshakes,
            max_handshakes_per_ip: per_ip,
            ..Default::default()
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn each_cap_refuses_the_one_over_it_and_frees_its_slot_on_drop() {
        let g = gate(3, 10, 10);
        let held: Vec<_> = (0..3).map(|_| g.admit(A).expect("under the cap")).collect();
        assert_eq!(g.admit(B).err(), Some(Refused::Connections));
        drop(held);
        assert!(g.admit(B).is_ok());

        let g = gate(10, 2, 10);
        let first = g.admit(A).expect("1");
        let _second = g.admit(B).expect("2");
        assert_eq!(g.admit(B).err(), Some(Refused::Handshakes));
        // A finished handshake frees its slot while the connection stays.
        let (_connection, handshake) = first;
        drop(handshake);
        assert!(g.admit(B).is_ok());
    }

    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let g = gate(10, 10, 2);
        let _a: Vec<_> = (0..2).map(|_| g.admit(A).expect("under the cap")).collect();
        assert_eq!(g.admit(A).err(), Some(Refused::HandshakesFromPeer));
        assert!(g.admit(B).is_ok(), "another address still gets in");
    }
}
