//! The iptables backend: istio-init's rule set inside each pod's network namespace. Outbound TCP is REDIRECTed
//! to 15001 except keel's own (marked) sockets, loopback and the exclusions; inbound TCP is REDIRECTed to 15006
//! except HBONE, keel's ports and the excluded inbound ports. keel reads the original destination with
//! SO_ORIGINAL_DST. This is the baseline the benchmark compares eBPF against, and the fallback without eBPF.
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};
use keel_ebpf_common::{HBONE_PORT, INBOUND_PORT, KEEL_MARK, KEEL_MARK_MASK, OUTBOUND_PORT};

use super::PodCapture;
use crate::config::{Config, Exclusions};

const OUTPUT_CHAIN: &str = "KEEL_OUTPUT";
const PREROUTING_CHAIN: &str = "KEEL_PREROUTING";

pub struct IptablesCapture {
    rules: String,
}

impl IptablesCapture {
    pub fn new(config: &Config) -> IptablesCapture {
        IptablesCapture { rules: rule_set(&config.exclusions) }
    }

    /// Installs nothing anywhere: for a keel that enrolls no pod.
    pub fn inactive() -> IptablesCapture {
        IptablesCapture { rules: String::new() }
    }

    /// Installs the rules in the pod, replacing any a previous keel left there (after `kill -9`).
    pub fn enroll(&self, pod: &PodCapture<'_>) -> anyhow::Result<()> {
        let netns = pod.netns.path();
        remove_rules(netns);
        restore(netns, &self.rules).with_context(|| format!("installing iptables rules in {}", netns.display()))
    }

    pub fn unenroll(&self, pod: &PodCapture<'_>) -> anyhow::Result<()> {
        remove_rules(pod.netns.path());
        Ok(())
    }
}

/// The nat table keel owns in a pod, in iptables-restore syntax (applied with --noflush: other chains stay).
pub fn rule_set(exclusions: &Exclusions) -> String {
    let mut r = String::from("*nat\n");
    r += &format!(":{OUTPUT_CHAIN} - [0:0]\n:{PREROUTING_CHAIN} - [0:0]\n");
    r += &format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}\n");
    r += &format!("-A PREROUTING -p tcp -j {PREROUTING_CHAIN}\n");
    // Outbound: keel's own sockets, loopback, then the exclusions go straight out.
    r += &format!("-A {OUTPUT_CHAIN} -m mark --mark {KEEL_MARK:#x}/{KEEL_MARK_MASK:#x} -j RETURN\n");
    r += &format!("-A {OUTPUT_CHAIN} -o lo -j RETURN\n");
    for cidr in &exclusions.outbound_cidrs {
        r += &format!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN\n");
    }
    for port in &exclusions.outbound_ports {
        r += &format!("-A {OUTPUT_CHAIN} -p tcp --dport {port} -j RETURN\n");
    }
    r += &format!("-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}\n");
    // Inbound: loopback, keel's own listeners and the excluded ports are not redirected.
    r += &format!("-A {PREROUTING_CHAIN} -i lo -j RETURN\n");
    for port in [OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT].iter().chain(&exclusions.inbound_ports) {
        r += &format!("-A {PREROUTING_CHAIN} -p tcp --dport {port} -j RETURN\n");
    }
    r += &format!("-A {PREROUTING_CHAIN} -p tcp -j REDIRECT --to-ports {INBOUND_PORT}\n");
    r += "COMMIT\n";
    r
}

fn in_netns(netns: &std::path::Path, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).arg("--").arg(program);
    cmd
}

fn restore(netns: &std::path::Path, rules: &str) -> anyhow::Result<()> {
    let mut child = in_netns(netns, "iptables-restore")
        .args(["--noflush", "-w", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (is iptables installed? `cargo xtask setup` installs it)")?;
    child.stdin.take().expect("piped stdin").write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("iptables-restore failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Removes keel's jumps and chains; missing ones are fine (idempotent).
fn remove_rules(netns: &std::path::Path) {
    for args in [
        vec!["-D", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN],
        vec!["-D", "PREROUTING", "-p", "tcp", "-j", PREROUTING_CHAIN],
        vec!["-F", OUTPUT_CHAIN],
        vec!["-X", OUTPUT_CHAIN],
        vec!["-F", PREROUTING_CHAIN],
        vec!["-X", PREROUTING_CHAIN],
    ] {
        let _ = in_netns(netns, "iptables").args(["-w", "5", "-t", "nat"]).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_exclude_keel_loopback_and_configured_traffic_before_redirecting() {
        let exclusions = Exclusions { outbound_cidrs: vec!["10.96.0.0/12".parse().unwrap()], outbound_ports: vec![9999], inbound_ports: vec![15021] };
        let rules = rule_set(&exclusions);
        let lines: Vec<&str> = rules.lines().collect();
        let pos = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}"));
        let redirect_out = pos("REDIRECT --to-ports 15001");
        for excluded in ["--mark 0x539/0xfff -j RETURN", "-o lo -j RETURN", "-d 10.96.0.0/12 -j RETURN", "--dport 9999 -j RETURN"] {
            assert!(pos(excluded) < redirect_out, "{excluded} must come before the outbound redirect");
        }
        let redirect_in = pos("REDIRECT --to-ports 15006");
        for excluded in ["-i lo -j RETURN", "--dport 15021 -j RETURN", "--dport 15008 -j RETURN"] {
            assert!(pos(excluded) < redirect_in, "{excluded} must come before the inbound redirect");
        }
        assert_eq!(lines.first(), Some(&"*nat"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }
}
