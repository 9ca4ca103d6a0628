//! Running external commands: every command is echoed (`+ ENV=v prog args`) before it runs.

use std::{
    ffi::OsStr,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{Command, ExitCode, ExitStatus, Output},
};

use anyhow::{bail, Context as _, Result};

/// Builds a command from a program and its arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// The command as a shell-like line, for echoing and error messages.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    let line = words.join(" ");
    match cmd.get_current_dir() {
        Some(dir) => format!("(cd {} && {line})", quote(dir.as_os_str())),
        None => line,
    }
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn echo(cmd: &Command) {
    println!("+ {}", display(cmd));
}

/// Runs the command with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs the command with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    echo(cmd);
    cmd.status().with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Runs the command with stdout and stderr captured (a probe); fails only if it cannot start.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    echo(cmd);
    cmd.output().with_context(|| format!("could not start `{}`", display(cmd)))
}

/// A probe's stdout if the command started and exited 0, else `None`.
pub fn probe(cmd: &mut Command) -> Option<String> {
    match capture(cmd) {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => None,
    }
}

/// Replaces this process with the command (so its exit code becomes ours); returns only on error.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    echo(cmd);
    let err = cmd.exec();
    anyhow::Error::new(err).context(format!("could not exec `{}`", display(cmd)))
}

/// The exit code a shell would report for this status (128 + signal when killed).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status.code().or_else(|| status.signal().map(|sig| 128 + sig)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
