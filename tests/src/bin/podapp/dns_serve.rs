//! `podapp dns-serve`: an authoritative DNS responder for the lab (UDP), answering A queries from a file of
//! `name ip ttl` lines that it re-reads on every query, so a test changes a name's address by rewriting the
//! file. Anything else (other types, unknown names) gets NXDOMAIN.
use std::{net::UdpSocket, path::PathBuf};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{rdata::A, RData, Record, RecordType},
};
use serde_json::json;

use crate::emit;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 53)]
    port: u16,
    /// `name ip ttl` per line (names without the trailing dot).
    #[arg(long)]
    answers: PathBuf,
}

pub fn run(args: Args) -> bool {
    let socket = match UdpSocket::bind(("0.0.0.0", args.port)) {
        Ok(s) => s,
        Err(e) => {
            emit(&json!({"error": format!("bind udp 0.0.0.0:{}: {e}", args.port)}));
            return false;
        }
    };
    emit(&json!({ "listening": args.port }));
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.message_type = MessageType::Response;
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.add_queries(query.queries.clone());
        let table = std::fs::read_to_string(&args.answers).unwrap_or_default();
        let mut found = false;
        for q in &query.queries {
            let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
            for line in table.lines() {
                let mut fields = line.split_whitespace();
                let (Some(n), Some(ip), ttl) = (fields.next(), fields.next(), fields.next()) else { continue };
                if n.eq_ignore_ascii_case(&name) {
                    found = true;
                    if let (RecordType::A, Ok(ip)) = (q.query_type(), ip.parse()) {
                        let ttl = ttl.and_then(|t| t.parse().ok()).unwrap_or(5);
                        response.add_answer(Record::from_rdata(q.name().clone(), ttl, RData::A(A(ip))));
                    }
                }
            }
        }
        if !found {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, from);
        }
    }
}
