//! The lab checked on its own, without keel: pods reach each other, processes land in the right netns and
//! cgroup, deadlines hold, and cleanup leaves nothing behind — also when the test panics.

use super::*;
use crate::lab::{Lab, ServeMode};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Everything a lab creates on the machine, to check it is gone afterwards.
struct Footprint {
    netns: Vec<PathBuf>,
    cgroup: PathBuf,
    dir: PathBuf,
    bpffs: PathBuf,
}

impl Footprint {
    fn of(lab: &Lab, pods: &[&crate::lab::Pod]) -> Self {
        let mut netns = vec![lab.node_netns_path()];
        netns.extend(pods.iter().map(|p| p.netns_path.clone()));
        Footprint {
            netns,
            cgroup: lab.cgroup_root().to_path_buf(),
            dir: lab.dir().to_path_buf(),
            bpffs: lab.bpffs_dir().to_path_buf(),
        }
    }

    fn leftovers(&self, expect_dir_gone: bool) -> Vec<String> {
        let mut left: Vec<String> = self
            .netns
            .iter()
            .chain([&self.cgroup, &self.bpffs])
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        let listed = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for ns in &self.netns {
            let name = ns
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str()))
            {
                left.push(format!("ip netns {name}"));
            }
        }
        if expect_dir_gone && self.dir.exists() {
            left.push(self.dir.display().to_string());
        }
        left
    }
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
        let _sink = server.serve(
            9090,
            ServeMode::Sink,
            &["--read-delay-ms", "1", "--read-chunk", "16384"],
        )?;
        let _far = far.serve(8080, ServeMode::Echo, &[])?;

        // The server runs inside the pod: its netns and its cgroup.
        if !same_netns(srv.pid(), &server.netns_path)? {
            bail!("server process is not in the pod's network namespace");
        }
        let procs = std::fs::read_to_string(server.cgroup_path.join("cgroup.procs"))?;
        if !procs.lines().any(|l| l.trim() == srv.pid().to_string()) {
            bail!(
                "server pid {} not in {}: {procs:?}",
                srv.pid(),
                server.cgroup_path.display()
            );
        }

        let sent = send_ok(&client, server.addr(8080), MIB, ServeMode::Echo)?;
        let want = crate::payload::payload_sha256(1, MIB);
        if sent.json["sha256"] != want.as_str() || sent.json["received"] != MIB {
            bail!(
                "echo result does not match the deterministic payload: {}",
                sent.json
            );
        }
        // Direct (no keel): the client's address is its pod address, and the server saw it as the peer.
        if !sent.local.starts_with(&format!("{}:", client.ip))
            || sent.json["peer"] != server.addr(8080).to_string()
        {
            bail!("unexpected addresses: {}", sent.json);
        }
        // The biggest transfer the suites use, across the veths: podapp itself must not be the bottleneck.
        let big = send_ok(&client, server.addr(8080), 50 * MIB, ServeMode::Echo)?;
        eprintln!("50 MiB echo, direct: {} ms", big.json["duration_ms"]);
        let sunk = send_ok(&client, server.addr(9090), 2 * MIB, ServeMode::Sink)?;
        if sunk.json["server"]["peer"] != sunk.local.as_str() {
            bail!(
                "sink saw peer {} but the client was {}",
                sunk.json["server"]["peer"],
                sunk.local
            );
        }
        send_ok(&client, far.addr(8080), 1, ServeMode::Echo).context("pod at 10.244.0.200")?;
        // In-pod loopback.
        let _own = client.serve(7070, ServeMode::Echo, &[])?;
        send_ok(
            &client,
            "127.0.0.1:7070".parse()?,
            64 * KIB,
            ServeMode::Echo,
        )?;

        let r = client.connect_loop(server.addr(8080), 200, 16, Duration::from_secs(60))?;
        if r["ok"] != 200 || r["failed"] != 0 {
            bail!("connect-loop: {r}");
        }

        // A failing transfer is reported, not hidden: nothing listens on 8081.
        let v = client.send(
            server.addr(8081),
            10,
            ServeMode::Echo,
            Duration::from_secs(2),
        )?;
        if v["ok"] != false || v["error"].is_null() {
            bail!("send to a closed port should fail with an error: {v}");
        }

        // Deadlines: a command that runs too long is killed and reported.
        let t = std::time::Instant::now();
        let err = client.run_timeout(&["sleep", "30"], Duration::from_millis(300));
        if err.is_ok() || t.elapsed() > Duration::from_secs(5) {
            bail!(
                "run_timeout did not enforce its deadline: {err:?} after {:?}",
                t.elapsed()
            );
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
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "server pid {pid} still running: {stat}"
    );
}
