//! The "wire" between the nodes of a multi-node lab: one L2 segment, as if the node hosts were plugged into the
//! same switch.
//!
//! ```text
//!                       underlay netns <prefix>-wire
//!                       bridge "wire" (no address: a switch, not a host)
//!                  node0 ┤        node1 ┤        ...
//!                        ║veth          ║veth
//!   node netns <prefix>-node0         <prefix>-node1
//!   eth0 172.30.0.1/24                eth0 172.30.0.2/24
//!   br0  10.244.0.1/24                br0  10.244.1.1/24
//!   route 10.244.1.0/24 via 172.30.0.2    route 10.244.0.0/24 via 172.30.0.1
//! ```
//! Why a bridge in its own namespace rather than veth pairs between nodes: it works the same for 2, 3 or 4 nodes,
//! every node has exactly one uplink (`eth0`, like a real host), and the switch is a place outside every node
//! where a capture sees all node-to-node frames once each (a bridge whose device is promiscuous, as tcpdump makes
//! it, passes every frame it forwards up to its own device too). Nothing is NATed: a pod's packets cross the wire
//! with the pod addresses, routed by the nodes (ip_forward=1).

use super::node::NodeLayout;
use super::sys;
use anyhow::Result;
use std::net::Ipv4Addr;

/// The bridge in the underlay namespace; what a wire capture listens on.
pub const WIRE_BRIDGE: &str = "wire";
/// Each node's uplink, inside the node namespace.
pub const NODE_UPLINK: &str = "eth0";
/// Most nodes a lab builds (one /24 pod subnet and one wire address each).
pub const MAX_NODES: usize = 4;

/// Node `index`'s address on the wire: 172.30.0.(index+1).
pub fn node_wire_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, index as u8 + 1)
}

/// Creates the switch in the (already created) underlay namespace.
pub(super) fn create_switch(wire_netns: &str) -> Result<()> {
    sys::ip(&["-n", wire_netns, "link", "add", WIRE_BRIDGE, "type", "bridge"])?;
    sys::ip(&["-n", wire_netns, "link", "set", WIRE_BRIDGE, "up"])?;
    Ok(())
}

/// Cables node `node` to the switch: a veth `node<k>` on the bridge, `eth0` with the node's wire address inside
/// the node. Both ends live in lab namespaces, so deleting either namespace removes the pair.
pub(super) fn plug(wire_netns: &str, node: &NodeLayout) -> Result<()> {
    let ip = node.wire_ip.expect("only nodes of a multi-node lab are plugged into the wire");
    let port = format!("node{}", node.index);
    sys::ip(&["-n", wire_netns, "link", "add", &port, "type", "veth", "peer", "name", NODE_UPLINK, "netns", &node.netns])?;
    sys::ip(&["-n", wire_netns, "link", "set", &port, "master", WIRE_BRIDGE, "up"])?;
    sys::ip(&["-n", &node.netns, "addr", "add", &format!("{ip}/24"), "dev", NODE_UPLINK])?;
    sys::ip(&["-n", &node.netns, "link", "set", NODE_UPLINK, "up"])?;
    Ok(())
}

/// Gives every node a route to every other node's pod subnet via that node's wire address, so pod-to-pod traffic
/// between nodes is forwarded by both nodes and crosses the wire.
pub(super) fn route_between(nodes: &[NodeLayout]) -> Result<()> {
    for from in nodes {
        for to in nodes.iter().filter(|n| n.index != from.index) {
            let via = to.wire_ip.expect("multi-node lab").to_string();
            sys::ip(&["-n", &from.netns, "route", "add", &to.pod_subnet(), "via", &via, "dev", NODE_UPLINK])?;
        }
    }
    Ok(())
}
