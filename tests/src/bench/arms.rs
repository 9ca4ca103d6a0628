//! The arms: the same keel binary, workers, client, server and target; only the capture setup differs. Adding an
//! arm (the HBONE one, cross-node pairs) is one more entry here.
use crate::lab::Backend;

pub struct Arm {
    pub name: &'static str,
    /// `None`: no keel at all (the physical limit on this machine).
    pub backend: Option<Backend>,
    pub keel_args: &'static [&'static str],
}

pub const ARMS: [Arm; 4] = [
    Arm { name: "direct", backend: None, keel_args: &[] },
    Arm { name: "iptables", backend: Some(Backend::Iptables), keel_args: &["--fast-path", "off"] },
    Arm { name: "ebpf", backend: Some(Backend::Ebpf), keel_args: &["--fast-path", "off"] },
    Arm { name: "ebpf+splice", backend: Some(Backend::Ebpf), keel_args: &["--fast-path", "on"] },
];

/// Arms of repetition `rep` in the order they run: each repetition starts one arm later, so no arm always runs
/// first (cold caches) or last (a warm, maybe throttled machine).
pub fn rotated(arms: &[&'static Arm], rep: u32) -> Vec<&'static Arm> {
    let n = arms.len();
    (0..n).map(|i| arms[(i + rep as usize) % n]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arm_leads_one_repetition_in_turn() {
        let arms: Vec<&Arm> = ARMS.iter().collect();
        let firsts: Vec<&str> = (0..4).map(|rep| rotated(&arms, rep)[0].name).collect();
        assert_eq!(firsts, ["direct", "iptables", "ebpf", "ebpf+splice"]);
        assert_eq!(rotated(&arms, 5).iter().map(|a| a.name).collect::<Vec<_>>(), ["iptables", "ebpf", "ebpf+splice", "direct"]);
    }
}
