//! Capturing what crosses the wire between nodes, to assert on what an eavesdropper would see: e.g. that a
//! marker sent pod-to-pod never appears in plaintext, and that node-to-node traffic is TCP to port 15008 (HBONE).
//!
//! tcpdump runs in the underlay namespace on the switch (see `wire.rs`), writing pcap packet by packet
//! (`-U --immediate-mode`), in the lab cgroup `<lab>/wire` — outside every node's keel `--cgroup`, and killed with
//! everything else when the lab drops.

use super::pcap::{self, TcpSegment, TcpStream};
use super::process::{self, ChildGuard};
use super::sys::{self, Placement};
use super::{cgroup, prereqs, wire, Lab};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the capture file must stop growing before we stop tcpdump: frames already on the wire are then in it.
const QUIET: Duration = Duration::from_millis(300);
const MAX_DRAIN: Duration = Duration::from_secs(5);

/// A running capture on the wire. Dropping it kills tcpdump; [`WireCapture::stop`] stops it cleanly and returns
/// what it saw.
pub struct WireCapture {
    child: ChildGuard,
    file: PathBuf,
}

impl Lab {
    /// Starts capturing every frame that crosses the wire (node to node). Fails in a single-node lab (there is no
    /// wire) and when tcpdump is not installed.
    pub fn capture_wire(&self) -> Result<WireCapture> {
        let Some(netns) = self.wire_netns() else {
            bail!("lab {} has one node and so no wire to capture: use Lab::with_nodes(name, 2..=4)", self.prefix);
        };
        prereqs::require_program("tcpdump", "apt-get install tcpdump; `cargo xtask setup` installs it")?;
        let cgroup = self.cgroup_root.join("wire");
        cgroup::create(&cgroup)?;
        let n = {
            let mut c = self.created.lock().unwrap();
            c.wire_captures += 1;
            c.wire_captures
        };
        let file = self.dir.join(format!("wire-{n}.pcap"));
        let mut cmd = std::process::Command::new("tcpdump");
        cmd.args(["-i", wire::WIRE_BRIDGE, "-n", "-s", "0", "-B", "32768", "-U", "--immediate-mode", "-Z", "root", "-w"]).arg(&file);
        let netns_path = Path::new("/var/run/netns").join(&netns);
        let _fds = sys::place(&mut cmd, &Placement { netns: Some(&netns_path), cgroup: Some(&cgroup) })?;
        let mut child = process::spawn_logged("tcpdump", &mut cmd, &self.dir.join(format!("wire-{n}.tcpdump.log")))?;
        // tcpdump says so on stderr once the capture socket is bound; frames sent after this are captured.
        child.wait_for_line(READY_TIMEOUT, |l| l.contains("listening on"))?;
        Ok(WireCapture { child, file })
    }
}

impl WireCapture {
    /// The pcap file tcpdump is writing (kept with the lab's logs when a test fails).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Waits for the capture to go quiet, stops tcpdump with SIGINT (it flushes and closes the file) and returns
    /// what it captured. Fails if tcpdump reports frames the kernel dropped: such a capture cannot show that
    /// something was NOT sent.
    pub fn stop(mut self) -> Result<CapturedBytes> {
        self.wait_quiet();
        self.child.signal(libc::SIGINT)?;
        let Some(status) = self.child.wait_timeout(STOP_TIMEOUT) else {
            self.child.kill();
            bail!("tcpdump did not exit within {STOP_TIMEOUT:?} of SIGINT; output:\n{}", process::tail(&self.child.log(), 20));
        };
        let log = self.child.log();
        if !status.success() {
            bail!("tcpdump exited with {status}; output:\n{}", process::tail(&log, 20));
        }
        if let Some(dropped) = dropped_by_kernel(&log).filter(|&d| d > 0) {
            bail!("tcpdump: the kernel dropped {dropped} frames, so the capture is incomplete; output:\n{}", process::tail(&log, 20));
        }
        let bytes = std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))?;
        let parsed = pcap::parse(&bytes).with_context(|| format!("parsing {}", self.file.display()))?;
        let streams = pcap::streams(&parsed.tcp);
        Ok(CapturedBytes { pcap: bytes, frames: parsed.frames, tcp: parsed.tcp, streams })
    }

    /// Polls the file size until it has not changed for [`QUIET`] (at most [`MAX_DRAIN`]): with `-U` and
    /// immediate mode each frame is written as it is read, so a still file means the socket is drained.
    fn wait_quiet(&self) {
        let size = || std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + MAX_DRAIN;
        let (mut last, mut since) = (size(), Instant::now());
        while Instant::now() < deadline && since.elapsed() < QUIET {
            std::thread::sleep(Duration::from_millis(50));
            let now = size();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
    }
}

/// `N packets dropped by kernel` from tcpdump's exit summary.
fn dropped_by_kernel(log: &str) -> Option<u64> {
    log.lines().find_map(|l| l.trim().strip_suffix("packets dropped by kernel")?.trim().parse().ok())
}

/// What a [`WireCapture`] saw.
#[derive(Debug, Clone)]
pub struct CapturedBytes {
    /// The pcap file as tcpdump wrote it: searching it finds anything sent in one frame, TCP or not.
    pub pcap: Vec<u8>,
    /// Frames captured (any protocol).
    pub frames: usize,
    /// Every IPv4 TCP segment, in capture order.
    pub tcp: Vec<TcpSegment>,
    /// The TCP payloads rebuilt per connection and direction, so a marker split across segments is found too.
    pub streams: Vec<TcpStream>,
}

impl CapturedBytes {
    /// Whether `needle` crossed the wire in the clear: in any single frame, or in any rebuilt TCP stream.
    pub fn contains(&self, needle: &[u8]) -> bool {
        pcap::contains(&self.pcap, needle) || self.streams.iter().any(|s| pcap::contains(&s.data, needle))
    }

    /// Whether any TCP segment went to or came from `port` (e.g. 15008, HBONE).
    pub fn saw_tcp_port(&self, port: u16) -> bool {
        self.tcp.iter().any(|s| s.src.port() == port || s.dst.port() == port)
    }

    /// TCP payload bytes sent to `port` (by any address).
    pub fn tcp_bytes_to_port(&self, port: u16) -> u64 {
        self.tcp.iter().filter(|s| s.dst.port() == port).map(|s| s.payload.len() as u64).sum()
    }

    /// One line per TCP stream (`src -> dst: N bytes`), for failure messages.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!("{} frames, {} TCP segments, {} TCP streams", self.frames, self.tcp.len(), self.streams.len())];
        lines.extend(self.streams.iter().map(|s| format!("  {} -> {}: {} bytes", s.src, s.dst, s.data.len())));
        lines.join("\n")
    }
}

/// Bytes `offset..offset+len` of what `podapp send --seed SEED` sends (`Pod::send` uses seed 1): a marker a test
/// can look for on the wire without shipping a payload of its own.
pub fn podapp_payload(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    let mut all = vec![0u8; offset + len];
    crate::payload::Payload::new(seed).fill(&mut all);
    all.split_off(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcpdumps_drop_count() {
        let log = "tcpdump: listening on wire, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                   12 packets captured\n12 packets received by filter\n3 packets dropped by kernel\n";
        assert_eq!(dropped_by_kernel(log), Some(3));
        assert_eq!(dropped_by_kernel("tcpdump: listening on wire\n"), None);
    }

    #[test]
    fn podapp_payload_is_a_window_of_the_stream() {
        let whole = podapp_payload(1, 0, 100);
        assert_eq!(podapp_payload(1, 37, 20), whole[37..57]);
        assert_ne!(podapp_payload(2, 37, 20), whole[37..57]);
    }
}
