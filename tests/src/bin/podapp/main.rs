//! podapp: the application that runs inside lab pods.
//!
//! Plain blocking std networking (one thread per connection), so that what the suites measure is keel, not the test
//! app; the HTTP subcommands (http-serve, http-load, grpc-call) use tokio and hyper, for HTTP/1.1, h2c and gRPC
//! streaming. Every subcommand prints exactly one JSON line of results on stdout (servers: `{"listening": P}` once bound)
//! and exits non-zero on error, so the harness can both parse and assert.

mod connect_loop;
mod dns_serve;
mod grpc_call;
mod http_load;
mod http_serve;
mod otlp_receive;
mod send;
mod serve;

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(name = "podapp", about = "Test application run inside keel lab pods")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Write back every byte read; half-close after the peer's EOF.
    Echo,
    /// Read everything, then answer one JSON line with the byte count and SHA-256.
    Sink,
}

#[derive(Subcommand)]
enum Cmd {
    /// Listen on 0.0.0.0:PORT and serve connections until killed.
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, default_value = "echo")]
        mode: Mode,
        /// Sleep this long between reads (a slow reader, sink mode).
        #[arg(long, default_value_t = 0)]
        read_delay_ms: u64,
        /// Bytes per read.
        #[arg(long, default_value_t = 64 * 1024)]
        read_chunk: usize,
    },
    /// Send BYTES of deterministic data, half-close, read to EOF and verify.
    Send {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, value_enum, default_value = "echo")]
        mode: Mode,
        /// Connect timeout and per-read/per-write idle timeout.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Spread the bytes over this long (16 KiB at a time): a long-lived stream, e.g. across a keel upgrade.
        #[arg(long, default_value_t = 0)]
        duration_ms: u64,
    },
    /// COUNT sequential short connections to an echo server.
    ConnectLoop {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 16)]
        bytes: usize,
        #[arg(long, default_value_t = 5_000)]
        timeout_ms: u64,
    },
    /// Serve HTTP/1.1 and h2c (prior knowledge) on 0.0.0.0:PORT, plus a streaming gRPC echo, until killed.
    HttpServe(http_serve::ServeArgs),
    /// Answer DNS A queries (UDP) from a `name ip ttl` file re-read on every query, until killed.
    DnsServe(dns_serve::Args),
    /// Send N HTTP requests over C keep-alive connections and tally the outcomes.
    HttpLoad(http_load::LoadArgs),
    /// One streaming h2c gRPC call: send a message, await its reply, repeat; then read the trailers.
    GrpcCall(grpc_call::GrpcArgs),
    /// Receive OTLP traces (gRPC and HTTP/protobuf) and print every span as a JSON line, until killed.
    OtlpReceive(otlp_receive::Args),
}

fn main() {
    let cli = Cli::parse();
    let ok = match cli.cmd {
        Cmd::Serve { port, mode, read_delay_ms, read_chunk } => serve::run(port, mode, read_delay_ms, read_chunk.max(1)),
        Cmd::Send { to, bytes, mode, timeout_ms, seed, duration_ms } => {
            send::run(to, bytes, mode, timeout_ms, seed, std::time::Duration::from_millis(duration_ms))
        }
        Cmd::ConnectLoop { to, count, bytes, timeout_ms } => connect_loop::run(to, count, bytes, timeout_ms),
        Cmd::HttpServe(a) => http_serve::run(a),
        Cmd::DnsServe(a) => dns_serve::run(a),
        Cmd::HttpLoad(a) => http_load::run(a),
        Cmd::GrpcCall(a) => grpc_call::run(a),
        Cmd::OtlpReceive(a) => otlp_receive::run(a),
    };
    std::process::exit(if ok { 0 } else { 1 });
}

/// Prints one JSON result line and flushes (the harness reads it through a pipe or a file).
pub fn emit(v: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The tokio runtime of the HTTP subcommands (reports its own failure).
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            emit(&serde_json::json!({"error": format!("tokio runtime: {e}")}));
            None
        }
    }
}

pub fn addr_string(r: std::io::Result<SocketAddr>) -> String {
    r.map(|a| a.to_string()).unwrap_or_else(|e| format!("?({e})"))
}
