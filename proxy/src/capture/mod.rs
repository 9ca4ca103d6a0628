//! Capture: how an enrolled pod's TCP reaches keel's in-pod listeners, and how keel learns where it was going.
//!
//! Two backends behind one interface, so the same end-to-end suite and benchmark run against both:
//! - [`ebpf`]: cgroup connect4 (+ sock_ops hand-over) for outbound, per-netns sk_lookup for inbound, an optional
//!   sockmap fast path. No NAT, no conntrack, cost paid once per connection.
//! - [`iptables`]: istio-init's REDIRECT rules inside the pod (the baseline, and the fallback without eBPF).
pub mod ebpf;
pub mod iptables;

use std::{net::SocketAddrV4, os::fd::BorrowedFd};

use serde::Serialize;
use tokio::net::TcpStream;

use crate::{config::Config, netns::Netns, pods::PodSpec};

pub use crate::plan::Direction;

/// What a backend needs to capture one pod: its identity, namespace, and keel's listeners inside it.
pub struct PodCapture<'a> {
    pub spec: &'a PodSpec,
    pub netns: &'a Netns,
    pub inbound_listener: BorrowedFd<'a>,
}

#[derive(Debug, thiserror::Error)]
pub enum OriginalDstError {
    #[error("no original destination recorded for client {0} (connection not made through capture)")]
    NotRecorded(std::net::SocketAddr),
    #[error("reading the original destination: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading the original destination map: {0}")]
    Map(String),
}

/// Counters of one kernel program.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProgramCounters {
    pub captured: u64,
    pub passed: u64,
    pub redirected: u64,
    /// Connections refused because keel's listener was gone (sk_lookup, fail closed).
    pub refused: u64,
    /// Connections let past keel under a same-node bypass verdict (connect4, sk_lookup).
    pub bypassed: u64,
    pub errors: u64,
}

impl ProgramCounters {
    /// Each outcome by the name the metrics give it (`keel_ebpf_program_decisions_total{decision=...}`).
    pub fn decisions(&self) -> [(&'static str, u64); 6] {
        [
            ("captured", self.captured),
            ("passed", self.passed),
            ("redirected", self.redirected),
            ("refused", self.refused),
            ("bypassed", self.bypassed),
            ("error", self.errors),
        ]
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EbpfCounters {
    pub connect4: ProgramCounters,
    pub sock_ops: ProgramCounters,
    pub sk_msg: ProgramCounters,
    pub sk_lookup: ProgramCounters,
}

impl EbpfCounters {
    /// Each program by the hook it runs at (`keel_<hook>` in the eBPF object).
    pub fn programs(&self) -> [(&'static str, &ProgramCounters); 4] {
        [("connect4", &self.connect4), ("sock_ops", &self.sock_ops), ("sk_msg", &self.sk_msg), ("sk_lookup", &self.sk_lookup)]
    }
}

pub enum Capture {
    // Boxed: the eBPF backend holds the whole loaded object; the enum lives once per daemon anyway.
    Ebpf(Box<ebpf::EbpfCapture>),
    Iptables(iptables::IptablesCapture),
}

impl Capture {
    /// A capture that captures nothing: `keel gateway` enrolls no pod (it serves its own listeners).
    pub fn none() -> Capture {
        Capture::Iptables(iptables::IptablesCapture::inactive())
    }

    /// Loads and attaches whatever the backend needs node-wide; fails with a message saying what is missing.
    pub fn start(config: &Config) -> anyhow::Result<Capture> {
        Ok(match config.capture {
            crate::config::CaptureMode::Ebpf => Capture::Ebpf(Box::new(ebpf::EbpfCapture::start(config)?)),
            crate::config::CaptureMode::Iptables => Capture::Iptables(iptables::IptablesCapture::new(config)),
        })
    }

    pub fn enroll(&self, pod: &PodCapture<'_>) -> anyhow::Result<()> {
        match self {
            Capture::Ebpf(c) => c.enroll(pod),
            Capture::Iptables(c) => c.enroll(pod),
        }
    }

    /// Captures a pod a previous keel captured and handed over (`crate::handover`), with the same listeners. eBPF:
    /// enrolled again (the same socket re-registered, this keel's sk_lookup link replacing the pinned one: each
    /// step leaves the pod captured). iptables: the previous keel's REDIRECT rules stay as they are; enrolling
    /// again would remove and re-add them, and connections in between would go around keel.
    pub fn adopt(&self, pod: &PodCapture<'_>) -> anyhow::Result<()> {
        match self {
            Capture::Ebpf(c) => c.enroll(pod),
            Capture::Iptables(_) => Ok(()),
        }
    }

    /// Stops capturing the pod. Existing connections keep running; new ones are no longer captured.
    pub fn unenroll(&self, pod: &PodCapture<'_>) -> anyhow::Result<()> {
        match self {
            Capture::Ebpf(c) => c.unenroll(pod),
            Capture::Iptables(c) => c.unenroll(pod),
        }
    }

    /// After restoring persisted pods: releases what a previous keel captured for pods not among `enrolled`
    /// (netns cookie and addresses of each pod this keel serves).
    pub fn retain(&self, enrolled: &[(u64, Vec<std::net::IpAddr>)]) -> anyhow::Result<()> {
        match self {
            Capture::Ebpf(c) => c.retain(enrolled),
            Capture::Iptables(_) => Ok(()),
        }
    }

    /// Where an accepted connection was going before capture steered it to keel.
    pub fn original_destination(&self, direction: Direction, netns_cookie: u64, stream: &TcpStream) -> Result<SocketAddrV4, OriginalDstError> {
        match (self, direction) {
            (Capture::Ebpf(c), Direction::Outbound) => c.original_destination(netns_cookie, stream),
            // sk_lookup hands keel the connection unchanged: its local address is the original destination.
            (Capture::Ebpf(_), Direction::Inbound) => match stream.local_addr()? {
                std::net::SocketAddr::V4(v4) => Ok(v4),
                other => Err(OriginalDstError::NotRecorded(other)),
            },
            (Capture::Iptables(_), _) => Ok(crate::sockopt::original_dst(stream)?),
        }
    }

    pub fn set_fast_path(&self, on: bool) -> anyhow::Result<()> {
        match self {
            Capture::Ebpf(c) => c.set_fast_path(on),
            Capture::Iptables(_) => {
                anyhow::ensure!(!on, "the fast path needs eBPF capture (running with --capture iptables)");
                Ok(())
            }
        }
    }

    pub fn fast_path(&self) -> bool {
        match self {
            Capture::Ebpf(c) => c.fast_path(),
            Capture::Iptables(_) => false,
        }
    }

    /// The eBPF backend, where same-node bypass lives (`None` with iptables, which never bypasses).
    pub fn ebpf(&self) -> Option<&ebpf::EbpfCapture> {
        match self {
            Capture::Ebpf(c) => Some(c),
            Capture::Iptables(_) => None,
        }
    }

    pub fn counters(&self) -> Option<EbpfCounters> {
        match self {
            Capture::Ebpf(c) => Some(c.counters()),
            Capture::Iptables(_) => None,
        }
    }

    /// Removes everything node-wide the backend made (attachments, pins). Pods must be unenrolled first.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        match self {
            Capture::Ebpf(c) => c.shutdown(),
            Capture::Iptables(_) => Ok(()),
        }
    }
}
