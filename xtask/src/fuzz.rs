//! `cargo xtask fuzz`: builds the cargo-fuzz targets of `fuzz/` (nightly, sanitizer flags, their own lock file
//! and target directory) once, then runs each for `--seconds`, stopping at the first crash with the path of the
//! input that crashed. New corpus entries go to `fuzz/target/corpus/<target>` (not committed); the committed
//! seeds in `fuzz/corpus/<target>` are read, never written.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    run::{self, cmd},
    setup, ws,
};

/// One input taking longer than this is a hang, reported as a crash (libFuzzer's default is 20 minutes).
const INPUT_TIMEOUT_SECONDS: u32 = 10;

/// What one target's run amounted to.
struct Summary {
    target: String,
    runs: Option<u64>,
    coverage: Option<u64>,
    features: Option<u64>,
    /// `None`: no crash. Else the crashing input's path (or the reason when libFuzzer wrote none).
    crash: Option<String>,
}

pub fn fuzz(seconds: u32, only: Option<&str>) -> Result<ExitCode> {
    setup::ensure_cargo_fuzz()?;
    let dir = ws::root().join("fuzz");
    let targets = targets(&dir)?;
    let targets: Vec<String> = match only {
        None => targets,
        Some(name) if targets.iter().any(|t| t == name) => vec![name.to_owned()],
        Some(name) => bail!("no fuzz target {name:?} (there are: {})", targets.join(", ")),
    };
    let start = Instant::now();
    let mut build = cmd("cargo", ["+nightly", "fuzz", "build"]);
    build.current_dir(&dir);
    if let Some(name) = only {
        build.arg(name);
    }
    run::run(&mut build)?;
    println!("fuzz: built in {}", setup::secs(start.elapsed()));

    let mut summaries = Vec::new();
    for target in &targets {
        let summary = run_target(&dir, target, seconds)?;
        println!("{}", line(&summary));
        let crashed = summary.crash.is_some();
        summaries.push(summary);
        if crashed {
            break;
        }
    }
    println!("fuzz: summary ({} s per target, {} in all)", seconds, setup::secs(start.elapsed()));
    for summary in &summaries {
        println!("  {}", line(summary));
    }
    match summaries.iter().find_map(|s| s.crash.as_ref().map(|c| (&s.target, c))) {
        Some((target, input)) => {
            eprintln!("fuzz: {target} crashed on {input}");
            eprintln!("fuzz: reproduce with `cd fuzz && cargo +nightly fuzz run {target} {input}`");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The targets `cargo fuzz list` reports, in its order.
fn targets(dir: &Path) -> Result<Vec<String>> {
    let mut list = cmd("cargo", ["fuzz", "list"]);
    list.current_dir(dir);
    let out = run::capture(&mut list)?;
    if !out.status.success() {
        bail!("`cargo fuzz list` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

fn run_target(dir: &Path, target: &str, seconds: u32) -> Result<Summary> {
    let scratch = dir.join("target").join("corpus").join(target);
    let seeds = dir.join("corpus").join(target);
    for d in [&scratch, &seeds] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log_path = dir.join("target").join(format!("{target}.log"));
    let mut log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = cmd("cargo", ["+nightly", "fuzz", "run", target]);
    // libFuzzer adds new inputs to the first corpus directory and only reads the others.
    command
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-artifact_prefix={}/", dir.join("artifacts").join(target).display()))
        .current_dir(dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    fs::create_dir_all(dir.join("artifacts").join(target))?;
    println!("+ {} (log: {})", run::display(&command), log_path.display());
    let mut child = command.spawn().with_context(|| format!("could not start `{}`", run::display(&command)))?;
    let stderr = child.stderr.take().context("the fuzzer's stderr")?;
    let mut summary = Summary { target: target.to_owned(), runs: None, coverage: None, features: None, crash: None };
    let mut tail: Vec<String> = Vec::new();
    let mut failed = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading the fuzzer's output")?;
        writeln!(log, "{line}")?;
        read_line(&line, &mut summary);
        failed |= line.contains("ERROR: libFuzzer") || line.contains("panicked at") || line.starts_with("==") && line.contains("ERROR");
        tail.push(line);
        if tail.len() > 80 {
            tail.remove(0);
        }
    }
    let status = child.wait()?;
    if !status.success() || failed {
        for line in &tail {
            eprintln!("  | {line}");
        }
        summary.crash.get_or_insert_with(|| format!("no input written ({status}); see {}", log_path.display()));
    }
    Ok(summary)
}

/// Picks the numbers out of libFuzzer's status lines (`#4096 pulse  cov: 812 ft: 1630 corp: 52/3kb ...`,
/// `Done 123 runs in 20 second(s)`) and the crashing input (`Test unit written to <path>`).
fn read_line(line: &str, summary: &mut Summary) {
    let number_after = |key: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(runs) = line.strip_prefix("Done ").and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok()) {
        summary.runs = Some(runs);
    } else if let Some(runs) = line.strip_prefix('#').and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok()) {
        summary.runs = Some(runs);
    }
    if let Some(cov) = number_after("cov:") {
        summary.coverage = Some(cov);
    }
    if let Some(ft) = number_after("ft:") {
        summary.features = Some(ft);
    }
    if let Some(path) = line.split("Test unit written to ").nth(1) {
        summary.crash = Some(PathBuf::from(path.trim()).display().to_string());
    }
}

fn line(s: &Summary) -> String {
    let number = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let result = match &s.crash {
        None => "ok".to_owned(),
        Some(input) => format!("CRASH: {input}"),
    };
    format!("fuzz: {}: {} runs, coverage {} (features {}), {result}", s.target, number(s.runs), number(s.coverage), number(s.features))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_lines_are_read() {
        let mut s = Summary { target: "t".into(), runs: None, coverage: None, features: None, crash: None };
        read_line("#65536\tpulse  cov: 812 ft: 1630 corp: 52/3kb lim: 4096 exec/s: 3276 rss: 61Mb", &mut s);
        assert_eq!((s.runs, s.coverage, s.features), (Some(65536), Some(812), Some(1630)));
        read_line("Done 70000 runs in 21 second(s)", &mut s);
        assert_eq!(s.runs, Some(70000));
        read_line("artifact_prefix='a/'; Test unit written to fuzz/artifacts/t/crash-da39a3ee", &mut s);
        assert_eq!(s.crash.as_deref(), Some("fuzz/artifacts/t/crash-da39a3ee"));
        assert_eq!(line(&s), "fuzz: t: 70000 runs, coverage 812 (features 1630), CRASH: fuzz/artifacts/t/crash-da39a3ee");
    }
}
