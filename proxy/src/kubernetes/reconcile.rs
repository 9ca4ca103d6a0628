//! Reconciliation as a pure function: what the API says of the node's pods against what keel has enrolled, to the
//! enrollments and releases that close the difference. Pods are matched by UID (one pod, one enrollment, whoever
//! made it: keel-cni's ADD, the agent, or a previous keel whose pods were restored).
//!
//! Level-triggered: the agent runs it after every change it sees and on a timer, so a failed action is simply
//! planned again. It only acts on what the API says: a pod keel has but the API does not list is released only
//! once the agent holds a complete list (after the first sync; an API server that is down leaves the last list in
//! place), and not within the grace of a CNI ADD (the ADD can be faster than the watch that brings the pod).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::decision::{Release, Verdict};
use crate::pods::PodName;

/// A pod keel should have captured: what its enrollment needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub uid: String,
    pub name: PodName,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
}

/// A pod keel has enrolled (from its `pods` list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    pub name: PodName,
    /// `None` for a pod enrolled by cgroup (an operator's `keel enroll --cgroup`): not the agent's to judge.
    pub uid: Option<String>,
    pub ips: Vec<IpAddr>,
}

/// The API's view of one pod of the node, by UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub name: PodName,
    pub service_account: String,
    pub verdict: Verdict,
}

/// Why keel releases a pod.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseReason {
    #[error(transparent)]
    Verdict(#[from] Release),
    #[error("the API lists no such pod on this node (deleted, or moved)")]
    Gone,
    #[error("its addresses in the API changed to {0:?}: enrolled again with them")]
    AddressesChanged(Vec<IpAddr>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Release the pod enrolled as `name` with `uid`.
    Unenroll {
        name: PodName,
        uid: String,
        reason: ReleaseReason,
    },
    Enroll(Wanted),
}

/// Which pods the plan must leave alone for now.
pub trait Holds {
    /// A pod enrolled by a CNI ADD a moment ago that the API has not shown keel yet: kept.
    fn in_cni_grace(&self, uid: &str) -> bool;
    /// A pod the agent may not enroll now: its last attempt failed and its retry is not due, or keel-cni's DEL
    /// released its sandbox (its next sandbox comes with an ADD).
    fn enroll_held(&self, uid: &str) -> bool;
}

/// The actions that make `enrolled` what `observed` asks for: every release first (a release frees the name and
/// addresses an enrollment may need), then every enrollment.
pub fn plan(observed: &BTreeMap<String, Observed>, enrolled: &[Enrolled], holds: &impl Holds) -> Vec<Action> {
    let mut releases = Vec::new();
    let mut enrolls = Vec::new();
    let mut have: BTreeSet<&str> = BTreeSet::new();
    for pod in enrolled {
        let Some(uid) = pod.uid.as_deref() else { continue };
        have.insert(uid);
        let unenroll = |reason: ReleaseReason| Action::Unenroll { name: pod.name.clone(), uid: uid.to_owned(), reason };
        match observed.get(uid) {
            None if holds.in_cni_grace(uid) => {}
            None => releases.push(unenroll(ReleaseReason::Gone)),
            Some(Observed { verdict: Verdict::Pending, .. }) => {}
            Some(Observed { verdict: Verdict::Release(release), .. }) => releases.push(unenroll(release.clone().into())),
            Some(Observed { verdict: Verdict::Capture { ips }, name, service_account }) => {
                if !same_addresses(ips, &pod.ips) && !holds.enroll_held(uid) {
                    releases.push(unenroll(ReleaseReason::AddressesChanged(ips.clone())));
                    enrolls.push(Action::Enroll(Wanted {
                        uid: uid.to_owned(),
                        name: name.clone(),
                        service_account: service_account.clone(),
                        ips: ips.clone(),
                    }));
                }
            }
        }
    }
    for (uid, pod) in observed {
        if let Verdict::Capture { ips } = &pod.verdict {
            if !have.contains(uid.as_str()) && !holds.enroll_held(uid) {
                enrolls.push(Action::Enroll(Wanted {
                    uid: uid.clone(),
                    name: pod.name.clone(),
                    service_account: pod.service_account.clone(),
                    ips: ips.clone(),
                }));
            }
        }
    }
    releases.extend(enrolls);
    releases
}

/// The pod's addresses in the API against those it is enrolled with: as sets of IPv4 addresses (keel captures
/// IPv4 only, and a CNI result may list them in another order).
fn same_addresses(api: &[IpAddr], enrolled: &[IpAddr]) -> bool {
    let v4 = |ips: &[IpAddr]| ips.iter().copied().filter(IpAddr::is_ipv4).collect::<BTreeSet<_>>();
    v4(api) == v4(enrolled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_mesh::ambient::NotAmbient;

    #[derive(Default)]
    struct TestHolds {
        grace: BTreeSet<&'static str>,
        held: BTreeSet<&'static str>,
    }

    impl Holds for TestHolds {
        fn in_cni_grace(&self, uid: &str) -> bool {
            self.grace.contains(uid)
        }
        fn enroll_held(&self, uid: &str) -> bool {
            self.held.contains(uid)
        }
    }

    fn name(n: &str) -> PodName {
        PodName { namespace: "apps".into(), name: n.into() }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn capture(n: &str, address: &str) -> Observed {
        Observed { name: name(n), service_account: "sa".into(), verdict: Verdict::Capture { ips: vec![ip(address)] } }
    }

    fn with(n: &str, verdict: Verdict) -> Observed {
        Observed { name: name(n), service_account: "sa".into(), verdict }
    }

    fn enrolled(n: &str, uid: Option<&str>, address: &str) -> Enrolled {
        Enrolled { name: name(n), uid: uid.map(str::to_owned), ips: vec![ip(address)] }
    }

    fn observed(pods: &[(&str, Observed)]) -> BTreeMap<String, Observed> {
        pods.iter().map(|(uid, o)| ((*uid).to_owned(), o.clone())).collect()
    }

    fn wanted(uid: &str, n: &str, address: &str) -> Action {
        Action::Enroll(Wanted { uid: uid.into(), name: name(n), service_account: "sa".into(), ips: vec![ip(address)] })
    }

    fn unenroll(uid: &str, n: &str, reason: ReleaseReason) -> Action {
        Action::Unenroll { name: name(n), uid: uid.into(), reason }
    }

    #[test]
    fn missing_pods_are_enrolled_and_enrolled_ones_left_alone() {
        let api = observed(&[("u1", capture("a", "10.0.0.1")), ("u2", capture("b", "10.0.0.2"))]);
        let actions = plan(&api, &[enrolled("a", Some("u1"), "10.0.0.1")], &TestHolds::default());
        assert_eq!(actions, [wanted("u2", "b", "10.0.0.2")]);
        let all = [enrolled("a", Some("u1"), "10.0.0.1"), enrolled("b", Some("u2"), "10.0.0.2")];
        assert_eq!(plan(&api, &all, &TestHolds::default()), [], "nothing to do twice: one pod, one enrollment");
    }

    #[test]
    fn a_pod_enrolled_by_the_cni_is_recognized_by_uid_whatever_its_order_of_addresses() {
        let api = observed(&[("u1", with("a", Verdict::Capture { ips: vec![ip("10.0.0.1"), ip("10.0.0.9")] }))]);
        let by_cni = Enrolled { name: name("a"), uid: Some("u1".into()), ips: vec![ip("10.0.0.9"), ip("10.0.0.1"), ip("fd00::1")] };
        assert_eq!(plan(&api, &[by_cni], &TestHolds::default()), []);
    }

    #[test]
    fn pods_leaving_the_mesh_ending_or_gone_are_released() {
        let api = observed(&[
            ("u1", with("a", Verdict::Release(Release::NotAmbient(NotAmbient::OptedOut)))),
            ("u2", with("b", Verdict::Release(Release::Terminal("Succeeded".into())))),
        ]);
        let have = [enrolled("a", Some("u1"), "10.0.0.1"), enrolled("b", Some("u2"), "10.0.0.2"), enrolled("c", Some("u3"), "10.0.0.3")];
        assert_eq!(
            plan(&api, &have, &TestHolds::default()),
            [
                unenroll("u1", "a", ReleaseReason::Verdict(Release::NotAmbient(NotAmbient::OptedOut))),
                unenroll("u2", "b", ReleaseReason::Verdict(Release::Terminal("Succeeded".into()))),
                unenroll("u3", "c", ReleaseReason::Gone),
            ]
        );
    }

    #[test]
    fn what_the_plan_must_not_touch() {
        // A pod the API shows without an address yet keeps the enrollment the CNI ADD made.
        let api = observed(&[("u1", with("a", Verdict::Pending))]);
        assert_eq!(plan(&api, &[enrolled("a", Some("u1"), "10.0.0.1")], &TestHolds::default()), []);
        assert_eq!(plan(&api, &[], &TestHolds::default()), [], "and none is made from the API");
        // A pod enrolled by the CNI a moment ago, not yet seen in the API.
        let holds = TestHolds { grace: ["u9"].into(), ..TestHolds::default() };
        assert_eq!(plan(&BTreeMap::new(), &[enrolled("z", Some("u9"), "10.0.0.9")], &holds), []);
        // A pod enrolled by cgroup, without a UID: an operator's, not the agent's.
        assert_eq!(plan(&BTreeMap::new(), &[enrolled("manual", None, "10.0.0.7")], &TestHolds::default()), []);
        // A pod whose enrollment failed waits for its retry.
        let holds = TestHolds { held: ["u2"].into(), ..TestHolds::default() };
        assert_eq!(plan(&observed(&[("u2", capture("b", "10.0.0.2"))]), &[], &holds), []);
    }

    #[test]
    fn a_new_pod_of_the_same_name_replaces_the_old_one_release_first() {
        let api = observed(&[("new", capture("db-0", "10.0.0.5"))]);
        let actions = plan(&api, &[enrolled("db-0", Some("old"), "10.0.0.4")], &TestHolds::default());
        assert_eq!(actions, [unenroll("old", "db-0", ReleaseReason::Gone), wanted("new", "db-0", "10.0.0.5")]);
    }

    #[test]
    fn changed_addresses_enroll_the_pod_again() {
        let api = observed(&[("u1", capture("a", "10.0.0.8"))]);
        let actions = plan(&api, &[enrolled("a", Some("u1"), "10.0.0.1")], &TestHolds::default());
        assert_eq!(actions, [unenroll("u1", "a", ReleaseReason::AddressesChanged(vec![ip("10.0.0.8")])), wanted("u1", "a", "10.0.0.8")]);
    }
}
