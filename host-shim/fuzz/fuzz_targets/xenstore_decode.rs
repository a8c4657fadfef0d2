//! Fuzzes the shim's xenstore daemon as guests reach it: wire requests
//! (`Xenstored::handle`) and the ring page they travel on (`RingServer::pump`).
//!
//! Input is mostly valid: requests built from structured fields (a message type, a
//! transaction id, a few arguments drawn from real paths, tokens, permissions and
//! numbers, or raw bytes), sent by guest 2 and dom0 directly, or by guest 1
//! through its ring in pieces, with now and then a lying length or a corrupted ring
//! index. After every step the daemon's database must be consistent and every message
//! it sends well-formed. Run with `cargo +nightly fuzz run xenstore_decode` from
//! `host-shim/`.
#![no_main]

use arbitrary::Arbitrary;
use host_shim::xen::xenstored::{GuestRing, Quotas, RingServer, XsdSockmsg, Xenstored};
use libfuzzer_sys::fuzz_target;

const WORDS: &[&str] = &[
    "data",
    "data/a",
    "data/a/b",
    "name",
    "/",
    "/local/domain/1/data/x",
    "/local/domain/2/data",
    "/local/domain/0/backend",
    "@releaseDomain",
    "@introduceDomain",
    "T",
    "F",
    "0",
    "1",
    "2",
    "-1",
    "4096",
    "n1",
    "r2",
    "b0",
    "w32757",
    "check",
    "",
];

#[derive(Debug, Arbitrary)]
enum Arg {
    Word(u8),
    Bytes(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Request {
    type_: u8,
    raw_type: Option<u32>,
    tx_id: u8,
    args: Vec<Arg>,
    unterminated: bool,
    lie_len: Option<u16>,
}

impl Request {
    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        for arg in self.args.iter().take(6) {
            match arg {
                Arg::Word(i) => p.extend_from_slice(WORDS[*i as usize % WORDS.len()].as_bytes()),
                Arg::Bytes(b) => p.extend_from_slice(&b[..b.len().min(512)]),
            }
            p.push(0);
        }
        if self.unterminated {
            p.pop();
        }
        p
    }

    fn header(&self, len: usize, req_id: u32) -> XsdSockmsg {
        XsdSockmsg {
            type_: self.raw_type.unwrap_or(u32::from(self.type_ % 28)),
            req_id,
            tx_id: u32::from(self.tx_id % 4),
            len: len as u32,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    Direct { domain: u8, request: Request },
    Ring { request: Request, cut: u16 },
    Receive,
    CorruptReqProd(u32),
    CorruptRspCons(u32),
    Dom0Write { path: u8, value: Vec<u8> },
}

#[derive(Debug, Arbitrary)]
struct Input {
    small_quotas: bool,
    steps: Vec<Step>,
}

/// Every message in `bytes` is whole and within the payload limit.
fn check_stream(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let h = XsdSockmsg::from_prefix(bytes).expect("whole header");
        let len = h.len as usize;
        assert!(len <= 4096);
        bytes = bytes.get(16 + len..).expect("whole payload");
    }
}

fuzz_target!(|input: Input| {
    let quotas = if input.small_quotas {
        Quotas {
            nodes: 30,
            watches: 4,
            transactions: 2,
            transaction_nodes: 16,
            output_bytes: 2048,
            ..Quotas::default()
        }
    } else {
        Quotas::default()
    };
    let mut xs = Xenstored::new(quotas);
    xs.introduce_domain(1, "one").unwrap();
    xs.introduce_domain(2, "two").unwrap();
    let mut server = RingServer::new(1);
    let mut guest = GuestRing::new();
    server.attach(guest.memory());

    for (i, step) in input.steps.iter().take(256).enumerate() {
        let req_id = i as u32;
        match step {
            Step::Direct { domain, request } => {
                // Guest 1 is served through its ring, whose output must not be taken
                // here (a message half written to the ring would tear the stream).
                let domain = [0, 2][usize::from(domain % 2)];
                let payload = request.payload();
                let header = request.header(payload.len(), req_id);
                // Keep the domains under test alive.
                if domain == 0 && matches!(header.type_, 8 | 9) {
                    continue;
                }
                if xs.handle(domain, header, &payload).is_ok() {
                    check_stream(&xs.take_output(domain, usize::MAX));
                }
            }
            Step::Ring { request, cut } => {
                let payload = request.payload();
                let len = request.lie_len.map_or(payload.len(), usize::from);
                let mut bytes = request.header(len, req_id).to_bytes().to_vec();
                bytes.extend_from_slice(&payload);
                let cut = usize::from(*cut) % (bytes.len() + 1);
                guest.send(&bytes[..cut]);
                server.pump(&mut xs, guest.memory());
                guest.send(&bytes[cut..]);
                server.pump(&mut xs, guest.memory());
            }
            Step::Receive => {
                guest.receive();
                server.pump(&mut xs, guest.memory());
            }
            Step::CorruptReqProd(v) => {
                guest.set_req_prod(*v);
                server.pump(&mut xs, guest.memory());
            }
            Step::CorruptRspCons(v) => {
                guest.set_rsp_cons(*v);
                server.pump(&mut xs, guest.memory());
            }
            Step::Dom0Write { path, value } => {
                let path = WORDS[*path as usize % WORDS.len()];
                let _ = xs.dom0().write(None, path, value);
            }
        }
        if server.error().is_some() {
            assert_ne!(guest.error(), 0);
        }
        assert_eq!(xs.check(), Ok(()));
    }
});
