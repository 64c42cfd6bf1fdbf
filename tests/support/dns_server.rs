//! A real DNS server on loopback UDP, in-process: hickory-proto parses each
//! query and builds each answer (no hand-made DNS code); the zone is plain
//! data the test changes while the server runs. Included by tests/dns.rs,
//! tests/config_dns.rs and tests/agreement.rs with `#[path]`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// One SRV record: priority, weight, port, target name.
#[derive(Debug, Clone)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// What the server answers. Names are written without the final dot.
#[derive(Debug, Clone)]
pub struct Zone {
    pub hosts: HashMap<String, Vec<IpAddr>>,
    pub srv: HashMap<String, Vec<SrvRecord>>,
    /// TTL of every record, in seconds.
    pub ttl: u32,
    /// Answer every query with SERVFAIL.
    pub servfail: bool,
    /// Answer queries for these names with SERVFAIL, the others as usual.
    pub servfail_for: HashSet<String>,
    /// Rotate the records of each answer by one more each query, as DNS
    /// servers do to spread clients (BIND's `rrset-order cyclic`).
    pub rotate: bool,
}

impl Default for Zone {
    fn default() -> Self {
        Self {
            hosts: HashMap::new(),
            srv: HashMap::new(),
            ttl: 30,
            servfail: false,
            servfail_for: HashSet::new(),
            rotate: false,
        }
    }
}

impl Zone {
    /// A zone answering `ips` for each of `names`, every record with `ttl`.
    pub fn with_hosts(names: &[&str], ips: &[IpAddr], ttl: u32) -> Self {
        let hosts = names.iter().map(|n| ((*n).to_owned(), ips.to_vec()));
        Self {
            hosts: hosts.collect(),
            ttl,
            ..Self::default()
        }
    }
}

/// The running server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    pub async fn start(zone: Zone) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(zone));
        let queries = Arc::new(AtomicU64::new(0));
        let (z, q) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let turn = q.fetch_add(1, Ordering::Relaxed);
                let mut zone = z.lock().unwrap().clone();
                if zone.rotate {
                    for records in zone.srv.values_mut() {
                        let n = records.len().max(1);
                        records.rotate_left(turn as usize % n);
                    }
                    for ips in zone.hosts.values_mut() {
                        let n = ips.len().max(1);
                        ips.rotate_left(turn as usize % n);
                    }
                }
                if let Ok(bytes) = answer(&query, &zone).to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Self {
            addr,
            zone,
            queries,
            task,
        }
    }

    /// Changes the zone; later queries see the change.
    pub fn change(&self, f: impl FnOnce(&mut Zone)) {
        f(&mut self.zone.lock().unwrap());
    }

    /// Queries received so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

fn key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn answer(query: &Message, zone: &Zone) -> Message {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    for q in query.queries() {
        m.add_query(q.clone());
    }
    let failing = |q: &hickory_proto::op::Query| zone.servfail_for.contains(&key(q.name()));
    if zone.servfail || query.queries().iter().any(failing) {
        m.set_response_code(ResponseCode::ServFail);
        return m;
    }
    let mut known = false;
    for q in query.queries() {
        let name = key(q.name());
        if let Some(ips) = zone.hosts.get(&name) {
            known = true;
            for ip in ips {
                let rdata = match (q.query_type(), ip) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                m.add_answer(Record::from_rdata(q.name().clone(), zone.ttl, rdata));
            }
        }
        if let Some(records) = zone.srv.get(&name) {
            known = true;
            if q.query_type() == RecordType::SRV {
                for r in records {
                    let target = Name::from_ascii(format!("{}.", r.target)).unwrap();
                    let srv = SRV::new(r.priority, r.weight, r.port, target);
                    m.add_answer(Record::from_rdata(
                        q.name().clone(),
                        zone.ttl,
                        RData::SRV(srv),
                    ));
                }
            }
        }
    }
    if !known {
        m.set_response_code(ResponseCode::NXDomain);
    }
    m
}
