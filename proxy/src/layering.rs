//! The data path's layering, checked: no top-level module of the data path is on an import cycle (through any
//! module). Reads the sources; an edge is any `crate::<module>` path outside comments and `mod tests`.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The modules that must read top-down. (`xds` and `identity` are not here yet: `xds::setup` wires the certificate
/// provider of `identity`, which speaks over `xds`'s channel.)
const DATA_PATH: [&str; 21] = [
    "accept",
    "bypass",
    "captured",
    "chunk_io",
    "connection_error",
    "data_path",
    "dial",
    "fair_share",
    "hbone",
    "hbone_server",
    "jwt",
    "l4",
    "l7",
    "l7_config",
    "limits",
    "plan",
    "policy",
    "sockets",
    "telemetry",
    "upstream",
    "capture",
];

fn edges_of(source: &str) -> BTreeSet<String> {
    let code: String = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::x, b, c::{..}}`: the first name of every item at depth one.
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if depth == 1 && item_start && !c.is_whitespace() => {
                        found.insert(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
            if first == "lib" || first == "main" || first == "layering" {
                continue;
            }
            let edges = edges_of(&std::fs::read_to_string(&path).unwrap());
            graph.entry(first.clone()).or_default().extend(edges.into_iter().filter(|m| *m != first));
        }
    }
    graph
}

/// Whether `to` is reachable from `from`.
fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut pending = vec![from.to_owned()];
    while let Some(m) = pending.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                pending.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn the_data_path_has_no_import_cycle() {
    let graph = graph();
    let mut cycles = Vec::new();
    for module in DATA_PATH {
        assert!(graph.contains_key(module), "no module {module}");
        for next in &graph[module] {
            if reaches(&graph, next, module) {
                cycles.push(format!("{module} -> {next} -> ... -> {module}"));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_layers_keep_to_their_side() {
    let graph = graph();
    let forbidden = [
        ("l4", "l7"),
        ("l7", "l4"),
        ("dial", "l4"),
        ("dial", "l7"),
        ("dial", "data_path"),
        ("plan", "telemetry"),
        ("plan", "dial"),
        ("data_path", "l4"),
        ("data_path", "l7"),
        ("telemetry", "l4"),
        ("telemetry", "l7"),
        ("hbone", "l4"),
    ];
    for (from, to) in forbidden {
        assert!(!reaches(&graph, from, to), "{from} reaches {to}");
    }
}

#[test]
fn grouped_and_plain_imports_are_both_edges() {
    let edges = edges_of("use crate::{a::{b, c}, d, e::f};\nfn x() { crate::g::h(); }\n// crate::comment\n");
    assert_eq!(edges, ["a", "d", "e", "g"].into_iter().map(String::from).collect());
}
