//! `keel pc <view>`: the config dump a keel holds, the way `istioctl proxy-config` and `istioctl ztunnel-config`
//! print a proxy's: one view or all of them, as aligned tables or as JSON/YAML, narrowed to a namespace, a
//! workload or a port. The same for the node daemon (its API socket) and for a remote keel or gateway (its admin
//! port).
mod filter;
mod tables;

use crate::config_dump::ConfigDump;
pub use filter::Filters;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Every view below, one after the other.
    All,
    Workloads,
    Services,
    Policies,
    Certs,
    Status,
    Listeners,
    Secrets,
    Routes,
    Clusters,
    Endpoints,
}

impl View {
    /// The views `all` shows, in that order.
    pub(super) const EACH: [View; 10] = [
        View::Status,
        View::Workloads,
        View::Services,
        View::Policies,
        View::Certs,
        View::Listeners,
        View::Routes,
        View::Clusters,
        View::Endpoints,
        View::Secrets,
    ];

    pub(super) fn title(self) -> &'static str {
        match self {
            View::All => "all",
            View::Workloads => "workloads",
            View::Services => "services",
            View::Policies => "policies",
            View::Certs => "certs",
            View::Status => "status",
            View::Listeners => "listeners",
            View::Secrets => "secrets",
            View::Routes => "routes",
            View::Clusters => "clusters",
            View::Endpoints => "endpoints",
        }
    }
}

/// How a view is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// `view` of `dump`, narrowed by `filters`, written as `output`.
pub fn render(view: View, output: Output, filters: &Filters, mut dump: ConfigDump) -> anyhow::Result<String> {
    filters.apply(&mut dump)?;
    let document = || -> serde_json::Result<serde_json::Value> {
        use serde_json::to_value;
        match view {
            View::All => to_value(&dump),
            View::Workloads => to_value(&dump.workloads),
            View::Services => to_value(&dump.services),
            View::Policies => to_value(&dump.policies),
            View::Certs => to_value(&dump.certificates),
            View::Status => to_value(&dump.xds),
            View::Listeners => to_value(&dump.l7.listeners),
            View::Routes => to_value(&dump.l7.routes),
            View::Clusters => to_value(&dump.l7.clusters),
            View::Endpoints => to_value(&dump.l7.endpoints),
            View::Secrets => to_value(&dump.l7.secrets),
        }
    };
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&document()?)? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(&document()?)?,
        Output::Table => tables::render(view, &dump),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_dump::{ServiceEntry, WorkloadEntry};

    fn workload(namespace: &str, name: &str) -> WorkloadEntry {
        WorkloadEntry {
            uid: format!("{namespace}/{name}"),
            namespace: namespace.into(),
            name: name.into(),
            addresses: vec!["10.0.0.1".into()],
            node: "n".into(),
            identity: format!("spiffe://cluster.local/ns/{namespace}/sa/default"),
            protocol: "HBONE".into(),
            status: "HEALTHY".into(),
            services: vec![],
            policies: vec![],
            captured: false,
        }
    }

    #[test]
    fn json_and_yaml_carry_the_view_narrowed_by_namespace() {
        let dump = || ConfigDump {
            workloads: vec![workload("a", "one"), workload("b", "two")],
            services: vec![ServiceEntry {
                name: "b/web.b.svc.cluster.local".into(),
                vips: vec![],
                ports: vec![],
                endpoints: 0,
                healthy_endpoints: 0,
            }],
            ..Default::default()
        };
        let only_a = Filters { namespace: Some("a".into()), ..Default::default() };
        let json: serde_json::Value = serde_json::from_str(&render(View::Workloads, Output::Json, &only_a, dump()).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 1);
        assert_eq!(json[0]["name"], "one");
        let yaml = render(View::Services, Output::Yaml, &only_a, dump()).unwrap();
        assert_eq!(yaml.trim(), "[]", "b's service is not a's");
        let all = render(View::All, Output::Table, &Filters::default(), dump()).unwrap();
        for title in ["== status ==", "== workloads ==", "== clusters ==", "== secrets =="] {
            assert!(all.contains(title), "{all}");
        }
    }
}
