//! The images `cargo xtask image` wrote: unpacked with umoci, they hold only their static binaries, and each
//! binary runs inside its own root file system (chroot as root), with nothing from the host.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use super::{check_static, layout_dir, specs, LinkError, BIN_DIR, TAG};
use crate::ws;

#[test]
fn a_dynamically_linked_binary_is_refused_and_so_is_a_non_elf_file() {
    let sh = fs::canonicalize("/bin/sh").expect("/bin/sh");
    let err = check_static(&sh).expect_err("Debian's sh is dynamic");
    match err.downcast_ref::<LinkError>() {
        Some(LinkError::Dynamic(interp)) => assert!(interp.contains("ld-linux"), "{interp}"),
        other => panic!("{other:?}"),
    }
    let text = env::temp_dir().join(format!("keel-image-not-elf-{}", std::process::id()));
    fs::write(&text, [b'#'; 80]).unwrap();
    let err = check_static(&text).expect_err("not ELF");
    fs::remove_file(&text).unwrap();
    assert_eq!(err.downcast_ref::<LinkError>(), Some(&LinkError::NotElf));
}

/// Every regular file under `dir`, relative to it.
fn files(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, base, out);
        } else {
            out.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn each_image_runs_its_binary_from_its_own_root_file_system() {
    for spec in specs() {
        let layout = layout_dir(spec.name);
        if !layout.join("index.json").is_file() {
            let message = format!("no image layout at {} (run `cargo xtask image`)", layout.display());
            assert!(env::var("CI").as_deref() != Ok("true"), "{message}");
            eprintln!("skipped: {message}");
            continue;
        }
        let bundle = env::temp_dir().join(format!("keel-image-{}-{}", spec.name, std::process::id()));
        let _cleanup = RemoveOnDrop(bundle.clone());
        let mut unpack = Command::new("umoci");
        unpack.arg("unpack");
        if !ws::is_root() {
            unpack.arg("--rootless");
        }
        let out = unpack.arg("--image").arg(format!("{}:{TAG}", layout.display())).arg(&bundle).output().expect("umoci runs");
        assert!(out.status.success(), "umoci unpack {}: {}", spec.name, String::from_utf8_lossy(&out.stderr));

        let rootfs = bundle.join("rootfs");
        let mut found = Vec::new();
        files(&rootfs, &rootfs, &mut found);
        found.sort();
        let mut expected: Vec<String> = spec.binaries.iter().map(|b| format!("{BIN_DIR}/{b}")).collect();
        expected.sort();
        assert_eq!(found, expected, "{}: only its binaries", spec.name);

        let config: serde_json::Value = serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let entrypoint = format!("/{BIN_DIR}/{}", spec.binaries[0]);
        assert_eq!(config["process"]["args"], serde_json::json!([entrypoint]), "{}: entrypoint", spec.name);
        let (uid, gid) = spec.user.split_once(':').unwrap();
        assert_eq!(config["process"]["user"]["uid"].to_string(), uid, "{}: user", spec.name);
        assert_eq!(config["process"]["user"]["gid"].to_string(), gid, "{}: group", spec.name);

        for binary in &spec.binaries {
            let inside = format!("/{BIN_DIR}/{binary}");
            check_static(&rootfs.join(&inside[1..])).unwrap_or_else(|e| panic!("{}: {inside}: {e:#}", spec.name));
            // As root, chroot into the image's file system: the binary finds nothing of the host there.
            let mut run = if ws::is_root() {
                // By absolute path: the child environment is cleared, PATH included.
                let mut c = Command::new("/usr/sbin/chroot");
                c.arg(&rootfs).arg(&inside);
                c
            } else {
                Command::new(rootfs.join(&inside[1..]))
            };
            let out = if *binary == "keel-cni" {
                // A CNI plugin answers the runtime's VERSION call (CNI spec): environment and stdin, no flags.
                use std::io::Write as _;
                let mut child = run
                    .env_clear()
                    .env("CNI_COMMAND", "VERSION")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{}: {inside}: {e}", spec.name));
                child.stdin.take().expect("stdin").write_all(br#"{"cniVersion":"1.0.0"}"#).unwrap();
                child.wait_with_output().unwrap()
            } else {
                run.arg("--version").env_clear().output().unwrap_or_else(|e| panic!("{}: {inside}: {e}", spec.name))
            };
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}: {inside}: {}\n{stdout}{}", spec.name, out.status, String::from_utf8_lossy(&out.stderr));
            if *binary == "keel-cni" {
                assert!(stdout.contains("supportedVersions"), "{}: {inside} VERSION: {stdout}", spec.name);
            } else {
                assert_eq!(stdout.trim(), format!("{binary} {TAG}"), "{}: {inside} --version", spec.name);
            }
        }
    }
}
