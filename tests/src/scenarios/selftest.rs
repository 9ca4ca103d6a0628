//! The lab checked on its own, without keel: pods reach each other, processes land in the right netns and
//! cgroup, deadlines hold, and cleanup leaves nothing behind — also when the test panics. The same for multi-node
//! labs (pods reaching across the wire, the wire capture seeing plaintext), plus one check with keel and
//! keel-control on two nodes that each node's keel gets its own token, node name and pods.

use super::*;
use crate::lab::{mesh_config, podapp_payload, Backend, CapturedBytes, Lab, Pod, ServeMode};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Everything a lab creates on the machine, to check it is gone afterwards.
struct Footprint {
    prefix: String,
    netns: Vec<PathBuf>,
    cgroup: PathBuf,
    dir: PathBuf,
    bpffs: Vec<PathBuf>,
}

impl Footprint {
    fn of(lab: &Lab, pods: &[&crate::lab::Pod]) -> Self {
        let nodes = (0..lab.nodes()).map(|k| lab.node(k));
        let mut netns: Vec<PathBuf> = nodes.clone().map(|n| n.netns_path()).collect();
        netns.extend(lab.wire_netns().map(|w| Path::new("/var/run/netns").join(w)));
        netns.extend(pods.iter().map(|p| p.netns_path.clone()));
        Footprint {
            prefix: lab.prefix().to_string(),
            netns,
            cgroup: lab.cgroup_root().to_path_buf(),
            dir: lab.dir().to_path_buf(),
            bpffs: nodes.map(|n| n.bpffs_dir().to_path_buf()).collect(),
        }
    }

    fn leftovers(&self, expect_dir_gone: bool) -> Vec<String> {
        let mut left: Vec<String> =
            self.netns.iter().chain([&self.cgroup]).chain(&self.bpffs).filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
        let listed = command_output("ip", &["netns", "list"]);
        for ns in &self.netns {
            let name = ns.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if listed.lines().any(|l| l.split_whitespace().next() == Some(name.as_str())) {
                left.push(format!("ip netns {name}"));
            }
        }
        // Whatever the lab's bookkeeping says, nothing named after it may remain: namespaces (node, wire, pods), and
        // links in this namespace (the lab makes its veths inside its namespaces, so none should ever be here).
        let own = format!("{}-", self.prefix);
        left.extend(
            listed.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(&own)).map(|n| format!("ip netns {n} (by prefix)")),
        );
        left.extend(command_output("ip", &["-o", "link", "show"]).lines().filter(|l| l.contains(&self.prefix)).map(|l| format!("link {l}")));
        if expect_dir_gone && self.dir.exists() {
            left.push(self.dir.display().to_string());
        }
        left
    }
}

fn command_output(prog: &str, args: &[&str]) -> String {
    std::process::Command::new(prog).args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn same_netns(pid: u32, netns: &Path) -> Result<bool> {
    let proc_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    let pod_ns = std::fs::metadata(netns)?;
    Ok(proc_ns.ino() == pod_ns.ino() && proc_ns.dev() == pod_ns.dev())
}

/// Two pods, podapp echo/sink servers in one and clients in the other (no keel), then full cleanup.
pub fn lab_self_test() {
    let mut footprint = None;
    with_lab("selftest", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let far = lab.add_pod_at("far", 200)?;
        footprint = Some(Footprint::of(lab, &[&client, &server, &far]));

        let srv = server.serve(8080, ServeMode::Echo, &[])?;
        let _sink = server.serve(9090, ServeMode::Sink, &["--read-delay-ms", "1", "--read-chunk", "16384"])?;
        let _far = far.serve(8080, ServeMode::Echo, &[])?;

        // The server runs inside the pod: its netns and its cgroup.
        if !same_netns(srv.pid(), &server.netns_path)? {
            bail!("server process is not in the pod's network namespace");
        }
        let procs = std::fs::read_to_string(server.cgroup_path.join("cgroup.procs"))?;
        if !procs.lines().any(|l| l.trim() == srv.pid().to_string()) {
            bail!("server pid {} not in {}: {procs:?}", srv.pid(), server.cgroup_path.display());
        }

        let sent = send_ok(&client, server.addr(8080), MIB, ServeMode::Echo)?;
        let want = crate::payload::payload_sha256(1, MIB);
        if sent.json["sha256"] != want.as_str() || sent.json["received"] != MIB {
            bail!("echo result does not match the deterministic payload: {}", sent.json);
        }
        // Direct (no keel): the client's address is its pod address, and the server saw it as the peer.
        if !sent.local.starts_with(&format!("{}:", client.ip)) || sent.json["peer"] != server.addr(8080).to_string() {
            bail!("unexpected addresses: {}", sent.json);
        }
        // The biggest transfer the suites use, across the veths: podapp itself must not be the bottleneck.
        let big = send_ok(&client, server.addr(8080), 50 * MIB, ServeMode::Echo)?;
        eprintln!("50 MiB echo, direct: {} ms", big.json["duration_ms"]);
        let sunk = send_ok(&client, server.addr(9090), 2 * MIB, ServeMode::Sink)?;
        if sunk.json["server"]["peer"] != sunk.local.as_str() {
            bail!("sink saw peer {} but the client was {}", sunk.json["server"]["peer"], sunk.local);
        }
        send_ok(&client, far.addr(8080), 1, ServeMode::Echo).context("pod at 10.244.0.200")?;
        // In-pod loopback.
        let _own = client.serve(7070, ServeMode::Echo, &[])?;
        send_ok(&client, "127.0.0.1:7070".parse()?, 64 * KIB, ServeMode::Echo)?;

        let r = client.connect_loop(server.addr(8080), 200, 16, Duration::from_secs(60))?;
        if r["ok"] != 200 || r["failed"] != 0 {
            bail!("connect-loop: {r}");
        }

        // A failing transfer is reported, not hidden, and for what it is: nothing listens on 8081, so the connect
        // is refused (not a timeout, not a reset after connecting).
        send_fails(&client, server.addr(8081), Broke::Refused, "send to a closed port")?;

        // Deadlines: a command that runs too long is killed and reported.
        let t = std::time::Instant::now();
        let err = client.run_timeout(&["sleep", "30"], Duration::from_millis(300));
        if err.is_ok() || t.elapsed() > Duration::from_secs(5) {
            bail!("run_timeout did not enforce its deadline: {err:?} after {:?}", t.elapsed());
        }
        Ok(())
    });
    let fp = footprint.expect("footprint recorded");
    let left = fp.leftovers(true);
    assert!(left.is_empty(), "lab left behind: {left:?}");
}

/// A test that panics mid-way (with servers running) still gets its lab cleaned up.
pub fn lab_cleans_up_after_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let lab = Lab::new("panicky").expect("lab");
        let pod = lab.add_pod("server").expect("pod");
        let srv = pod.serve(8080, ServeMode::Echo, &[]).expect("server");
        tx.send((Footprint::of(&lab, &[&pod]), srv.pid())).unwrap();
        // Leak the guard so only the lab's cgroup kill can stop the server.
        std::mem::forget(srv);
        panic!("deliberate panic inside a lab");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let (fp, pid) = rx.recv().expect("footprint");
    // The temp dir is kept on failure (it holds the logs): remove it here, after checking the rest is gone.
    let left = fp.leftovers(false);
    let _ = std::fs::remove_dir_all(&fp.dir);
    assert!(left.is_empty(), "lab left behind after a panic: {left:?}");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Killed by the lab's cgroup kill. Its Child was forgotten, so nobody reaps it: a zombie ("Z") is fine.
    assert!(stat.is_empty() || stat.contains(") Z "), "server pid {pid} still running: {stat}");
}

// ---- multi-node labs ---------------------------------------------------------------------------------------------

/// The TCP segments of `cap` from `from` to `to` carrying data.
fn data_segments(cap: &CapturedBytes, from: &Pod, to: SocketAddr) -> usize {
    cap.tcp.iter().filter(|s| *s.src.ip() == from.ip && SocketAddr::V4(s.dst) == to && !s.payload.is_empty()).count()
}

/// Two nodes without keel: a pod on node 0 reaches a pod on node 1 across the wire (routed, not NATed), the wire
/// capture sees that plaintext transfer's bytes (so a "no plaintext on the wire" assertion can fail), traffic
/// between pods of one node stays off the wire, and the lab leaves nothing behind.
pub fn two_node_lab_self_test() {
    let mut footprint = None;
    with_nodes("twonode", 2, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let neighbour = lab.node(0).add_pod("neighbour")?;
        let server = lab.node(1).add_pod("server")?;
        footprint = Some(Footprint::of(lab, &[&client, &neighbour, &server]));

        // Each node: its own subnet, name and cgroup subtree, which the other node's keel --cgroup does not cover.
        if (client.ip, server.ip) != ("10.244.0.11".parse()?, "10.244.1.11".parse()?) {
            bail!("unexpected pod addresses {} and {}", client.ip, server.ip);
        }
        if (client.node, server.node) != (0, 1) || server.node_name != lab.node_name(1) || client.node_name == server.node_name {
            bail!("pods' nodes: {} {:?}, {} {:?}", client.node, client.node_name, server.node, server.node_name);
        }
        let (root0, root1) = (lab.node(0).cgroup_root(), lab.node(1).cgroup_root());
        if !client.cgroup_path.starts_with(root0) || server.cgroup_path.starts_with(root0) || !server.cgroup_path.starts_with(root1) {
            bail!(
                "pod cgroups {} / {} vs node roots {} / {}",
                client.cgroup_path.display(),
                server.cgroup_path.display(),
                root0.display(),
                root1.display()
            );
        }

        let _srv = server.serve(8080, ServeMode::Echo, &[])?;
        let _near = neighbour.serve(8080, ServeMode::Echo, &[])?;

        let capture = lab.capture_wire()?;
        let sent = send_ok(&client, server.addr(8080), 256 * KIB, ServeMode::Echo).context("node 0 pod -> node 1 pod")?;
        let cap = capture.stop()?;
        // Routed by both nodes, not NATed: each end sees the other's pod address.
        if !sent.local.starts_with(&format!("{}:", client.ip)) || sent.json["peer"] != server.addr(8080).to_string() {
            bail!("unexpected addresses: {}", sent.json);
        }
        // The transfer crossed the wire with pod addresses, and its plaintext is visible there: at the start, and
        // in the middle (spanning segments) of what podapp sent.
        if data_segments(&cap, &client, server.addr(8080)) == 0 {
            bail!("no client -> server segments on the wire:\n{}", cap.summary());
        }
        for offset in [0, 100_000, 200_000] {
            if !cap.contains(&podapp_payload(1, offset, 64)) {
                bail!("the wire capture misses the plaintext at offset {offset}:\n{}", cap.summary());
            }
        }
        // ...and contains is not trivially true.
        if cap.contains(&podapp_payload(99, 0, 64)) {
            bail!("the capture claims bytes that were never sent");
        }
        if cap.saw_tcp_port(15008) {
            bail!("port 15008 on the wire without keel:\n{}", cap.summary());
        }

        // Pod to pod on one node: bridged by the node, never on the wire. A second capture works too.
        let capture = lab.capture_wire()?;
        send_ok(&client, neighbour.addr(8080), 64 * KIB, ServeMode::Echo).context("pod -> pod on node 0")?;
        let cap = capture.stop()?;
        if data_segments(&cap, &client, neighbour.addr(8080)) != 0 || cap.contains(&podapp_payload(1, 0, 64)) {
            bail!("same-node traffic appeared on the wire:\n{}", cap.summary());
        }

        // A single-node lab has no wire to capture: a clear error, not a hang or an empty capture.
        match Lab::new("nowire")?.capture_wire() {
            Err(e) if format!("{e:#}").contains("no wire") => Ok(()),
            Err(e) => bail!("unexpected error capturing a single-node lab: {e:#}"),
            Ok(_) => bail!("a single-node lab offered a wire capture"),
        }
    });
    let fp = footprint.expect("footprint recorded");
    let left = fp.leftovers(true);
    assert!(left.is_empty(), "two-node lab left behind: {left:?}");
}

/// A multi-node test that panics mid-way, with a server and a wire capture running, still gets everything removed
/// (namespaces of both nodes and the wire, cgroup subtrees, tcpdump).
pub fn two_node_lab_cleans_up_after_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let lab = Lab::with_nodes("panicky2", 2).expect("lab");
        let pod = lab.node(1).add_pod("server").expect("pod");
        let srv = pod.serve(8080, ServeMode::Echo, &[]).expect("server");
        let capture = lab.capture_wire().expect("capture");
        let tcpdump = lab.cgroup_root().join("wire");
        let pids = crate::lab::process::read_lossy(&tcpdump.join("cgroup.procs"));
        tx.send((Footprint::of(&lab, &[&pod]), srv.pid(), pids)).unwrap();
        // Leak both guards so only the lab's cgroup kill can stop them.
        std::mem::forget(srv);
        std::mem::forget(capture);
        panic!("deliberate panic inside a two-node lab");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let (fp, server_pid, tcpdump_pids) = rx.recv().expect("footprint");
    let left = fp.leftovers(false);
    let _ = std::fs::remove_dir_all(&fp.dir);
    assert!(left.is_empty(), "two-node lab left behind after a panic: {left:?}");
    let tcpdump_pids: Vec<u32> = tcpdump_pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(!tcpdump_pids.is_empty(), "tcpdump was not in the lab's wire cgroup");
    for pid in tcpdump_pids.into_iter().chain([server_pid]) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Forgotten Child handles are never reaped: a zombie ("Z") is fine.
        assert!(stat.is_empty() || stat.contains(") Z "), "pid {pid} still running: {stat}");
    }
}

/// keel-control on node 0 and a keel on each node following it (each with its own token and node name): both get
/// ready, a cross-node transfer works with both capturing, and each keel sees only its own node's pods.
pub fn two_node_keels_follow_one_control_plane() {
    with_nodes("twokeel", 2, |lab| {
        let client = lab.node(0).add_pod("client")?;
        let server = lab.node(1).add_pod("server")?;
        let config_dir = lab.dir().join("mesh");
        mesh_config::write(
            &config_dir,
            "mesh.yaml",
            &[mesh_config::pod_object(&client, "sleep", &[("app", "sleep")]), mesh_config::pod_object(&server, "echo", &[("app", "echo")])],
        )?;
        let control = lab.start_control_on(0, &config_dir)?;
        if control.addr() != SocketAddr::new(crate::lab::node_wire_ip(0).into(), crate::lab::CONTROL_PORT) {
            bail!("keel-control listens on {}, not on node 0's wire address", control.addr());
        }
        let keels = (0..2)
            .map(|k| {
                let args = control.keel_args_for(k);
                if !args.windows(2).any(|w| w[0] == "--node-name" && w[1] == lab.node_name(k)) {
                    bail!("keel_args_for({k}) does not claim node {}: {args:?}", lab.node_name(k));
                }
                lab.start_keel_on(k, Backend::Ebpf, &args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>>>()?;
        for (k, keel) in keels.iter().enumerate() {
            wait_ready(keel).with_context(|| format!("keel on node {k}"))?;
        }
        keels[0].enroll(&client)?;
        keels[1].enroll(&server)?;
        let _srv = server.serve(8080, ServeMode::Echo, &[])?;
        let sent = send_ok(&client, server.addr(8080), 64 * KIB, ServeMode::Echo)?;
        expect_captured(
            &keels[0],
            &Expect {
                direction: "outbound",
                pod: &client,
                original_destination: server.addr(8080),
                source_port: sent.local_port(),
                bytes_sent: 64 * KIB,
                bytes_received: Some(64 * KIB),
            },
        )?;
        keels[1]
            .wait_connection(RECORD_TIMEOUT, |c| c.direction == "inbound" && c.pod == server.qualified())
            .context("node 1's keel did not record the inbound connection of its pod")?;
        // Isolation: a keel's --cgroup covers only its node, and it lists only the pods it enrolled.
        for (keel, own, other) in [(&keels[0], &client, &server), (&keels[1], &server, &client)] {
            let pods = keel.pods()?.to_string();
            if !pods.contains(&own.name) || pods.contains(&format!("\"{}\"", other.name)) {
                bail!("keel {} lists pods {pods}", keel.api_socket().display());
            }
            expect_not_captured(keel, &format!("a connection of {}, a pod of another node", other.qualified()), |c| c.pod == other.qualified())?;
        }
        Ok(())
    });
}
