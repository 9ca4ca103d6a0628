//! `keel-cni install` / `keel-cni uninstall`: what the DaemonSet's install step does on a node. Install copies the
//! plugin binary into the CNI bin dir and chains keel-cni at the end of the node's primary configuration list;
//! uninstall takes exactly that entry out again and removes the binary. Both are idempotent, and every file is
//! replaced atomically (written beside it, then renamed over it), so the runtime never reads half a file.
pub mod conflist;

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_json::Value;

/// The largest configuration file read (real ones are a few hundred bytes).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// The extensions the runtime's CNI library reads from the conf dir, all of them, sorted by name.
const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: no CNI configuration (*.conflist) yet; install the primary CNI first", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("{}: {reason}", path.display())]
    NotAConflist { path: PathBuf, reason: String },
    #[error("{}: not valid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_owned(), source }
}

pub struct InstallOptions {
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// The binary to copy (normally the running keel-cni itself).
    pub binary: PathBuf,
    pub api_socket: String,
    pub enroll_timeout_ms: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct InstallReport {
    pub binary: PathBuf,
    pub conflist: PathBuf,
    /// Whether the conflist was rewritten (false: keel-cni was already chained exactly so).
    pub conflist_changed: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UninstallReport {
    pub binary_removed: bool,
    pub conflists_edited: Vec<PathBuf>,
}

pub fn install(options: &InstallOptions) -> Result<InstallReport, InstallError> {
    let binary = options.cni_bin_dir.join(conflist::PLUGIN_TYPE);
    let bytes = std::fs::read(&options.binary).map_err(io(&options.binary))?;
    write_atomically(&binary, &bytes, 0o755)?;

    let primary = primary_config(&options.cni_conf_dir)?;
    let current = read_json(&primary)?;
    let entry = conflist::entry(&options.api_socket, options.enroll_timeout_ms);
    let chained = conflist::chain(&current, &entry).map_err(|e| InstallError::NotAConflist { path: primary.clone(), reason: e.to_string() })?;
    let conflist_changed = chained != current;
    if conflist_changed {
        let mode = std::fs::metadata(&primary).map_err(io(&primary))?.permissions().mode() & 0o7777;
        write_atomically(&primary, &to_file_bytes(&chained), mode)?;
    }
    Ok(InstallReport { binary, conflist: primary, conflist_changed })
}

/// Takes keel-cni out of every configuration list in the conf dir that has it (the primary one may have changed
/// since the install), and removes the binary.
pub fn uninstall(cni_bin_dir: &Path, cni_conf_dir: &Path) -> Result<UninstallReport, InstallError> {
    let mut conflists_edited = Vec::new();
    for path in config_files(cni_conf_dir)? {
        if path.extension().is_some_and(|e| e == "conf") {
            continue;
        }
        let Ok(current) = read_json(&path) else { continue };
        if !conflist::is_chained(&current) {
            continue;
        }
        let (edited, _) = conflist::unchain(&current).map_err(|e| InstallError::NotAConflist { path: path.clone(), reason: e.to_string() })?;
        let mode = std::fs::metadata(&path).map_err(io(&path))?.permissions().mode() & 0o7777;
        write_atomically(&path, &to_file_bytes(&edited), mode)?;
        conflists_edited.push(path);
    }
    let binary = cni_bin_dir.join(conflist::PLUGIN_TYPE);
    let binary_removed = match std::fs::remove_file(&binary) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(&binary)(e)),
    };
    Ok(UninstallReport { binary_removed, conflists_edited })
}

/// The configuration the runtime uses: the first file by name among `*.conf`, `*.conflist` and `*.json`, as the
/// CNI library the kubelet's runtimes use picks it. It must be a list (a single-plugin `.conf` cannot chain).
pub fn primary_config(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    let Some(first) = config_files(conf_dir)?.into_iter().next() else { return Err(InstallError::NoConfig { dir: conf_dir.to_owned() }) };
    if first.extension().is_some_and(|e| e == "conf") {
        return Err(InstallError::NotAConflist {
            path: first,
            reason:
                "the runtime uses this single-plugin .conf; keel-cni chains only into a .conflist (convert it, or name it so a .conflist sorts first)"
                    .to_owned(),
        });
    }
    Ok(first)
}

/// The conf dir's configuration files, sorted by name.
fn config_files(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(io(conf_dir))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| CONFIG_EXTENSIONS.contains(&e)))
        .collect();
    files.sort();
    Ok(files)
}

fn read_json(path: &Path) -> Result<Value, InstallError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)).map_err(io(path))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(InstallError::NotAConflist { path: path.to_owned(), reason: format!("larger than {MAX_CONFIG_BYTES} bytes") });
    }
    serde_json::from_slice(&bytes).map_err(|source| InstallError::Json { path: path.to_owned(), source })
}

fn to_file_bytes(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

/// Writes `bytes` to a hidden temp file beside `path` (a name the runtime does not read), syncs it, and renames
/// it over `path`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!(".{name}.keel-cni-{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io(path)(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Dirs(PathBuf);

    impl Dirs {
        fn new(test: &str) -> Dirs {
            let root = std::env::temp_dir().join(format!("keel-cni-install-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for d in ["bin", "net.d"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            std::fs::write(root.join("keel-cni-built"), b"\x7fELF plugin").unwrap();
            Dirs(root)
        }
        fn options(&self) -> InstallOptions {
            InstallOptions {
                cni_bin_dir: self.0.join("bin"),
                cni_conf_dir: self.0.join("net.d"),
                binary: self.0.join("keel-cni-built"),
                api_socket: "/run/keel/keel.sock".into(),
                enroll_timeout_ms: 10_000,
            }
        }
        fn conf(&self, name: &str, value: &Value) -> PathBuf {
            let path = self.0.join("net.d").join(name);
            std::fs::write(&path, serde_json::to_vec(value).unwrap()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            path
        }
        fn read(&self, path: &Path) -> Value {
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        }
        /// Every file in the conf dir: no temp file may be left behind.
        fn conf_dir_names(&self) -> Vec<String> {
            let mut names: Vec<String> =
                std::fs::read_dir(self.0.join("net.d")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn bridge_list() -> Value {
        json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}]})
    }

    #[test]
    fn install_chains_into_the_first_conflist_copies_the_binary_and_is_idempotent() {
        let d = Dirs::new("install");
        let primary = d.conf("10-pods.conflist", &bridge_list());
        let other = d.conf("20-other.conflist", &bridge_list());
        let report = install(&d.options()).unwrap();
        assert_eq!(report, InstallReport { binary: d.0.join("bin/keel-cni"), conflist: primary.clone(), conflist_changed: true });
        assert_eq!(std::fs::read(d.0.join("bin/keel-cni")).unwrap(), b"\x7fELF plugin");
        assert_eq!(std::fs::metadata(d.0.join("bin/keel-cni")).unwrap().permissions().mode() & 0o777, 0o755);
        let chained = d.read(&primary);
        assert_eq!(chained["plugins"][1], json!({"type": "keel-cni", "apiSocket": "/run/keel/keel.sock", "enrollTimeoutMs": 10000}));
        assert_eq!(chained["plugins"][0], bridge_list()["plugins"][0]);
        assert_eq!(d.read(&other), bridge_list(), "only the conflist the runtime uses is edited");
        assert_eq!(std::fs::metadata(&primary).unwrap().permissions().mode() & 0o777, 0o644, "the file keeps its mode");

        let again = install(&d.options()).unwrap();
        assert!(!again.conflist_changed);
        assert_eq!(d.read(&primary), chained);
        assert_eq!(d.conf_dir_names(), ["10-pods.conflist", "20-other.conflist"], "no temp file left");
    }

    #[test]
    fn uninstall_removes_exactly_its_entry_and_the_binary() {
        let d = Dirs::new("uninstall");
        let primary = d.conf("10-pods.conflist", &bridge_list());
        install(&d.options()).unwrap();
        let report = uninstall(&d.0.join("bin"), &d.0.join("net.d")).unwrap();
        assert_eq!(report, UninstallReport { binary_removed: true, conflists_edited: vec![primary.clone()] });
        assert_eq!(d.read(&primary), bridge_list());
        assert!(!d.0.join("bin/keel-cni").exists());
        let twice = uninstall(&d.0.join("bin"), &d.0.join("net.d")).unwrap();
        assert_eq!(twice, UninstallReport { binary_removed: false, conflists_edited: vec![] });
        assert_eq!(d.conf_dir_names(), ["10-pods.conflist"]);
    }

    #[test]
    fn the_runtimes_choice_is_the_first_config_file_of_any_kind() {
        let d = Dirs::new("primary");
        assert!(matches!(install(&d.options()), Err(InstallError::NoConfig { .. })));
        d.conf("20-pods.conflist", &bridge_list());
        std::fs::write(d.0.join("net.d/05-notes.txt"), "not a config").unwrap();
        assert_eq!(primary_config(&d.0.join("net.d")).unwrap(), d.0.join("net.d/20-pods.conflist"));
        d.conf("10-single.conf", &json!({"cniVersion": "1.0.0", "name": "x", "type": "bridge"}));
        let err = install(&d.options()).unwrap_err();
        assert!(matches!(&err, InstallError::NotAConflist { path, .. } if path.ends_with("10-single.conf")), "{err}");
        assert_eq!(d.read(&d.0.join("net.d/20-pods.conflist")), bridge_list(), "a conflist the runtime ignores is left alone");
    }

    #[test]
    fn a_broken_conflist_is_an_error_naming_the_file() {
        let d = Dirs::new("broken");
        std::fs::write(d.0.join("net.d/10-pods.conflist"), "{ not json").unwrap();
        let err = install(&d.options()).unwrap_err();
        assert!(err.to_string().contains("10-pods.conflist"), "{err}");
        assert_eq!(std::fs::read_to_string(d.0.join("net.d/10-pods.conflist")).unwrap(), "{ not json");
    }
}
