//! Tests of the daemon as its clients see it: wire requests through
//! [`Xenstored::handle`], the dom0 API, and rings through [`RingServer`].

use std::collections::HashMap;

use pv_drivers::abi::xen::DOMID_ANY;
use pv_drivers::abi::xs_wire::{
    XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE,
};

use super::*;

type T = XsdSockmsgType;

/// One message as a client receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    type_: u32,
    req_id: u32,
    tx_id: u32,
    payload: Vec<u8>,
}

/// Splits a byte stream into messages (panics on a torn stream: the daemon must never
/// produce one).
fn parse_stream(mut bytes: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = XsdSockmsg::from_prefix(bytes).expect("whole header");
        let len = h.len as usize;
        assert!(len <= XENSTORE_PAYLOAD_MAX, "reply too long: {len}");
        let payload = bytes[16..16 + len].to_vec();
        out.push(Msg {
            type_: h.type_,
            req_id: h.req_id,
            tx_id: h.tx_id,
            payload,
        });
        bytes = &bytes[16 + len..];
    }
    out
}

fn header(type_: T, req_id: u32, tx_id: u32, len: usize) -> XsdSockmsg {
    XsdSockmsg {
        type_: type_.as_raw(),
        req_id,
        tx_id,
        len: len as u32,
    }
}

fn event(path: &str, token: &str) -> (String, String) {
    (path.to_owned(), token.to_owned())
}

/// A daemon with guests 1 and 2, driven over the wire.
struct Harness {
    xs: Xenstored,
    next_id: u32,
    /// Watch events received, per domain.
    events: HashMap<u16, Vec<(String, String)>>,
}

impl Harness {
    fn new() -> Self {
        Self::with_quotas(Quotas::default())
    }

    fn with_quotas(q: Quotas) -> Self {
        let mut xs = Xenstored::new(q);
        xs.introduce_domain(1, "guest1").unwrap();
        xs.introduce_domain(2, "guest2").unwrap();
        Self {
            xs,
            next_id: 100,
            events: HashMap::new(),
        }
    }

    /// Sends a raw request; returns every message that came back.
    fn raw(&mut self, dom: u16, type_: u32, tx: u32, payload: &[u8]) -> Vec<Msg> {
        self.next_id += 1;
        let h = XsdSockmsg {
            type_,
            req_id: self.next_id,
            tx_id: tx,
            len: payload.len() as u32,
        };
        self.xs.handle(dom, h, payload).unwrap();
        parse_stream(&self.xs.take_output(dom, usize::MAX))
    }

    /// Sends a request; returns the reply (or the error's name), keeping the events.
    fn call(&mut self, dom: u16, type_: T, tx: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        let msgs = self.raw(dom, type_.as_raw(), tx, payload);
        let mut reply = None;
        for m in msgs {
            if m.type_ == T::WatchEvent.as_raw() {
                assert_eq!((m.req_id, m.tx_id), (0, 0));
                let mut parts = m.payload.split(|&b| b == 0);
                let p = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                let t = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                assert_eq!(m.payload.iter().filter(|&&b| b == 0).count(), 2);
                self.events.entry(dom).or_default().push((p, t));
            } else {
                assert!(reply.is_none(), "one reply per request");
                assert_eq!((m.req_id, m.tx_id), (self.next_id, tx), "ids echoed");
                reply = Some(m);
            }
        }
        let m = reply.expect("a reply");
        if m.type_ == T::Error.as_raw() {
            let name = m.payload.strip_suffix(&[0]).expect("NUL-terminated error");
            Err(String::from_utf8(name.to_vec()).unwrap())
        } else {
            assert_eq!(m.type_, type_.as_raw());
            Ok(m.payload)
        }
    }

    fn ok(&mut self, dom: u16, type_: T, tx: u32, payload: &[u8]) -> Result<(), String> {
        let r = self.call(dom, type_, tx, payload)?;
        assert_eq!(r, b"OK\0");
        Ok(())
    }

    fn read(&mut self, dom: u16, path: &str) -> Result<String, String> {
        self.read_tx(dom, 0, path)
    }

    fn read_tx(&mut self, dom: u16, tx: u32, path: &str) -> Result<String, String> {
        self.call(dom, T::Read, tx, &z(path))
            .map(|v| String::from_utf8(v).unwrap())
    }

    fn write(&mut self, dom: u16, path: &str, value: &str) -> Result<(), String> {
        self.write_tx(dom, 0, path, value)
    }

    fn write_tx(&mut self, dom: u16, tx: u32, path: &str, value: &str) -> Result<(), String> {
        let mut p = z(path);
        p.extend_from_slice(value.as_bytes());
        self.ok(dom, T::Write, tx, &p)
    }

    fn mkdir(&mut self, dom: u16, path: &str) -> Result<(), String> {
        self.ok(dom, T::Mkdir, 0, &z(path))
    }

    fn rm(&mut self, dom: u16, path: &str) -> Result<(), String> {
        self.rm_tx(dom, 0, path)
    }

    fn rm_tx(&mut self, dom: u16, tx: u32, path: &str) -> Result<(), String> {
        self.ok(dom, T::Rm, tx, &z(path))
    }

    fn dir(&mut self, dom: u16, path: &str) -> Result<Vec<String>, String> {
        self.call(dom, T::Directory, 0, &z(path))
            .map(|v| strings(&v))
    }

    fn get_perms(&mut self, dom: u16, path: &str) -> Result<String, String> {
        self.call(dom, T::GetPerms, 0, &z(path))
            .map(|v| strings(&v).join(" "))
    }

    fn set_perms(&mut self, dom: u16, path: &str, perms: &str) -> Result<(), String> {
        let mut p = z(path);
        for e in perms.split(' ') {
            p.extend_from_slice(&z(e));
        }
        self.ok(dom, T::SetPerms, 0, &p)
    }

    fn watch(&mut self, dom: u16, path: &str, token: &str) -> Result<(), String> {
        let mut p = z(path);
        p.extend_from_slice(&z(token));
        self.ok(dom, T::Watch, 0, &p)
    }

    fn unwatch(&mut self, dom: u16, path: &str, token: &str) -> Result<(), String> {
        let mut p = z(path);
        p.extend_from_slice(&z(token));
        self.ok(dom, T::Unwatch, 0, &p)
    }

    fn start(&mut self, dom: u16) -> Result<u32, String> {
        let r = self.call(dom, T::TransactionStart, 0, b"\0")?;
        let text = String::from_utf8(r.strip_suffix(&[0]).unwrap().to_vec()).unwrap();
        Ok(text.parse().unwrap())
    }

    fn end(&mut self, dom: u16, tx: u32, commit: bool) -> Result<(), String> {
        self.ok(
            dom,
            T::TransactionEnd,
            tx,
            if commit { b"T\0" } else { b"F\0" },
        )
    }

    fn events(&mut self, dom: u16) -> Vec<(String, String)> {
        self.events.remove(&dom).unwrap_or_default()
    }

    /// Drains output that arrived outside a request (events caused by others).
    fn drain(&mut self, dom: u16) -> Vec<(String, String)> {
        for m in parse_stream(&self.xs.take_output(dom, usize::MAX)) {
            assert_eq!(m.type_, T::WatchEvent.as_raw());
            let s = strings(&m.payload);
            self.events
                .entry(dom)
                .or_default()
                .push((s[0].clone(), s[1].clone()));
        }
        self.events(dom)
    }
}

/// `s` and a NUL.
fn z(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// NUL-terminated strings.
fn strings(v: &[u8]) -> Vec<String> {
    let mut parts: Vec<String> = v
        .split(|&b| b == 0)
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    assert_eq!(parts.pop().as_deref(), Some(""), "terminated");
    parts
}

fn err(name: &str) -> Result<(), String> {
    Err(name.to_owned())
}

#[test]
fn initial_tree() {
    let mut h = Harness::new();
    assert_eq!(h.read(0, "/local/domain/0/name").unwrap(), "Domain-0");
    assert_eq!(h.read(0, "/local/domain/0/domid").unwrap(), "0");
    assert_eq!(h.read(0, "domid").unwrap(), "0", "dom0's relative base");
    let root = h.dir(0, "/").unwrap();
    assert_eq!(root[..2], ["tool", "local"]);
    assert_eq!(h.dir(0, "/tool").unwrap(), ["xenstored"]);
    assert_eq!(
        h.get_perms(0, "@releaseDomain").unwrap(),
        format!("n0 r{DOMID_ANY}")
    );
    assert_eq!(h.get_perms(0, "@introduceDomain").unwrap(), "n0");
    assert_eq!(h.get_perms(0, "/").unwrap(), "n0");
    assert_eq!(h.xs.check(), Ok(()));
    assert!(h.xs.is_domain_introduced(0));
}

#[test]
fn introduced_domain_has_the_toolstack_nodes() {
    let mut h = Harness::new();
    let d = "/local/domain/1";
    assert_eq!(h.get_perms(0, d).unwrap(), "n0 r1");
    assert_eq!(h.read(1, "name").unwrap(), "guest1");
    assert_eq!(h.read(1, "domid").unwrap(), "1");
    for ro in ["cpu", "memory", "device", "control"] {
        assert_eq!(
            h.get_perms(0, &format!("{d}/{ro}")).unwrap(),
            "n0 r1",
            "{ro}"
        );
    }
    for rw in [
        "data",
        "drivers",
        "feature",
        "attr",
        "error",
        "control/shutdown",
        "control/feature-poweroff",
        "control/feature-reboot",
        "control/feature-suspend",
        "control/sysrq",
        "device/suspend/event-channel",
    ] {
        assert_eq!(h.get_perms(0, &format!("{d}/{rw}")).unwrap(), "n1", "{rw}");
    }
    // The guest may write where libxl lets it, and nowhere else of the toolstack's.
    h.write(1, "data/x", "1").unwrap();
    h.write(1, "control/shutdown", "").unwrap();
    assert_eq!(h.write(1, "name", "evil"), err("EACCES"));
    assert_eq!(h.write(1, "control/other", "x"), err("EACCES"));
    assert_eq!(h.mkdir(1, "device/vbd"), err("EACCES"));
    // Other domains see nothing of it.
    assert_eq!(h.read(2, "/local/domain/1/name"), Err("EACCES".into()));
    assert_eq!(
        h.read(2, "/local/domain/1/nonexistent"),
        Err("EACCES".into())
    );
    assert_eq!(h.read(1, "nonexistent"), Err("ENOENT".into()));
    assert_eq!(h.read(1, "/local/domain/0/name"), Err("EACCES".into()));
    assert_eq!(h.dir(1, "/local/domain"), Err("EACCES".into()));
    assert_eq!(h.xs.check(), Ok(()));
}

#[test]
fn introduce_with_config_and_errors() {
    let mut xs = Xenstored::new(Quotas::default());
    let config = DomainConfig {
        name: "vm".into(),
        uuid: Some("0a1b2c3d-0000-1111-2222-333344445555".into()),
        memory_kib: Some(131072),
        vcpus: Some(2),
        store_port: Some(1),
        store_ring_ref: Some(0xfeffc),
    };
    xs.introduce_domain_with(3, &config).unwrap();
    let mut d = xs.dom0();
    let vm = "/vm/0a1b2c3d-0000-1111-2222-333344445555";
    assert_eq!(d.read(None, "/local/domain/3/vm").unwrap(), vm.as_bytes());
    assert_eq!(d.read(None, &format!("{vm}/name")).unwrap(), b"vm");
    assert_eq!(d.get_perms(None, vm).unwrap().to_string(), "n0 r3");
    assert_eq!(
        d.read(None, "/local/domain/3/memory/target").unwrap(),
        b"131072"
    );
    assert_eq!(
        d.read(None, "/local/domain/3/cpu/1/availability").unwrap(),
        b"online"
    );
    assert_eq!(d.read(None, "/local/domain/3/store/port").unwrap(), b"1");
    assert_eq!(
        d.read(None, "/local/domain/3/store/ring-ref").unwrap(),
        b"1044476"
    );
    assert_eq!(
        d.get_perms(None, "/libxl/3/device").unwrap().to_string(),
        "n0"
    );

    let e = |r: Result<(), XsError>| r.unwrap_err().errno();
    assert_eq!(e(xs.introduce_domain(3, "again")), XenErrno::EEXIST);
    assert_eq!(e(xs.introduce_domain(0, "dom0")), XenErrno::EINVAL);
    assert_eq!(e(xs.introduce_domain(DOMID_ANY, "any")), XenErrno::EINVAL);
    let bad = DomainConfig {
        uuid: Some("a/b".into()),
        ..DomainConfig::named("x")
    };
    assert_eq!(e(xs.introduce_domain_with(4, &bad)), XenErrno::EINVAL);
    assert!(!xs.is_domain_introduced(4));
    assert_eq!(xs.check(), Ok(()));
}

#[test]
fn writes_create_parents_with_inherited_permissions() {
    let mut h = Harness::new();
    h.write(1, "data/a/b/c", "v").unwrap();
    assert_eq!(h.read(1, "data/a/b/c").unwrap(), "v");
    assert_eq!(h.read(1, "data/a/b").unwrap(), "");
    assert_eq!(h.get_perms(1, "data/a").unwrap(), "n1");
    assert_eq!(h.dir(1, "data/a").unwrap(), ["b"]);
    // A guest creating under a node that grants it write becomes the owner, and
    // keeps the other entries.
    h.xs.dom0()
        .set_perms(
            None,
            "/local/domain/0/shared",
            &Perms::new(0, Access::None).grant(1, Access::Both),
        )
        .unwrap_err();
    h.mkdir(0, "/local/domain/0/shared").unwrap();
    h.set_perms(0, "/local/domain/0/shared", "n0 b1").unwrap();
    h.write(1, "/local/domain/0/shared/mine", "x").unwrap();
    assert_eq!(
        h.get_perms(0, "/local/domain/0/shared/mine").unwrap(),
        "n1 b1"
    );
    // Dom0 creating keeps the parent's owner.
    h.write(0, "/local/domain/1/data/from0", "y").unwrap();
    assert_eq!(h.get_perms(1, "data/from0").unwrap(), "n1");
    h.write(0, "/new/deep/node", "z").unwrap();
    assert_eq!(h.get_perms(0, "/new/deep").unwrap(), "n0");
    // Values are binary.
    h.ok(1, T::Write, 0, b"data/bin\0a\0b\xff").unwrap();
    assert_eq!(h.call(1, T::Read, 0, b"data/bin\0").unwrap(), b"a\0b\xff");
    // Overwrite, and an empty value.
    h.write(1, "data/bin", "").unwrap();
    assert_eq!(h.read(1, "data/bin").unwrap(), "");
    assert_eq!(h.xs.check(), Ok(()));
}

#[test]
fn permissions_are_enforced() {
    let mut h = Harness::new();
    h.write(1, "data/shared", "s").unwrap();
    assert_eq!(
        h.read(2, "/local/domain/1/data/shared"),
        Err("EACCES".into())
    );
    h.set_perms(1, "data/shared", "n1 r2").unwrap();
    assert_eq!(h.read(2, "/local/domain/1/data/shared").unwrap(), "s");
    assert_eq!(
        h.write(2, "/local/domain/1/data/shared", "x"),
        err("EACCES")
    );
    assert_eq!(
        h.get_perms(2, "/local/domain/1/data/shared").unwrap(),
        "n1 r2"
    );
    // Only the owner may change permissions, and not the owner.
    assert_eq!(
        h.set_perms(2, "/local/domain/1/data/shared", "n2"),
        err("EACCES")
    );
    assert_eq!(h.set_perms(1, "data/shared", "n2"), err("EPERM"));
    assert_eq!(h.set_perms(1, "name", "n1"), err("EACCES"));
    // Dom0 may give it away.
    h.set_perms(0, "/local/domain/1/data/shared", "n2").unwrap();
    assert_eq!(h.read(1, "data/shared"), Err("EACCES".into()));
    assert_eq!(h.read(2, "/local/domain/1/data/shared").unwrap(), "s");
    // Default access for everyone.
    h.write(1, "data/public", "p").unwrap();
    h.set_perms(1, "data/public", "r1").unwrap();
    assert_eq!(h.read(2, "/local/domain/1/data/public").unwrap(), "p");
    // DOMID_ANY.
    h.write(1, "data/any", "a").unwrap();
    h.set_perms(1, "data/any", &format!("n1 b{DOMID_ANY}"))
        .unwrap();
    h.write(2, "/local/domain/1/data/any", "b").unwrap();
    // Entries for domains that do not exist grant nothing (but are listed); an
    // owner that does not exist is refused.
    h.mkdir(0, "/t").unwrap();
    h.set_perms(0, "/t", "n0 b9").unwrap();
    assert_eq!(h.get_perms(0, "/t").unwrap(), "n0 b9");
    h.xs.introduce_domain(9, "late").unwrap();
    assert_eq!(h.read(9, "/t"), Err("EACCES".into()));
    assert_eq!(h.set_perms(0, "/t", "n77"), err("ENOENT"));
    // Malformed lists.
    for bad in ["x1", "r", "rabc", "r1 q2"] {
        assert_eq!(h.set_perms(0, "/t", bad), err("EINVAL"), "{bad}");
    }
    assert_eq!(h.call(0, T::SetPerms, 0, b"/t\0").unwrap_err(), "EINVAL");
    assert_eq!(h.call(0, T::SetPerms, 0, b"/t").unwrap_err(), "EINVAL");
    assert_eq!(h.set_perms(0, "/nonexistent", "n0"), err("ENOENT"));
    assert_eq!(h.set_perms(1, "/nonexistent", "n1"), err("EACCES"));
    // Special nodes: dom0 can let a guest hear @introduceDomain.
    h.set_perms(0, "@introduceDomain", "n0 r1").unwrap();
    assert_eq!(h.get_perms(1, "@introduceDomain").unwrap(), "n0 r1");
    assert_eq!(
        h.get_perms(2, "@releaseDomain").unwrap(),
        format!("n0 r{DOMID_ANY}")
    );
    assert_eq!(h.get_perms(2, "@introduceDomain"), Err("EACCES".into()));
    assert_eq!(h.get_perms(2, "@nonexistent"), Err("EACCES".into()));
    assert_eq!(h.get_perms(0, "@nonexistent"), Err("ENOENT".into()));
    assert_eq!(h.read(0, "@introduceDomain"), Err("EINVAL".into()));
    assert_eq!(h.xs.check(), Ok(()));
}

#[test]
fn mkdir_and_rm() {
    let mut h = Harness::new();
    h.mkdir(1, "data/d/e").unwrap();
    assert_eq!(h.read(1, "data/d/e").unwrap(), "");
    h.write(1, "data/d/e", "keep").unwrap();
    h.mkdir(1, "data/d/e").unwrap();
    assert_eq!(
        h.read(1, "data/d/e").unwrap(),
        "keep",
        "mkdir leaves values"
    );
    h.write(1, "data/d/e/f/g", "x").unwrap();
    h.rm(1, "data/d").unwrap();
    assert_eq!(h.read(1, "data/d/e/f/g"), Err("ENOENT".into()));
    assert_eq!(h.read(1, "data/d"), Err("ENOENT".into()));
    assert_eq!(h.dir(1, "data").unwrap(), Vec::<String>::new());
    // Removing what is not there is fine if the parent is.
    h.rm(1, "data/d").unwrap();
    assert_eq!(h.rm(1, "data/d/e"), err("ENOENT"));
    assert_eq!(h.rm(1, "name"), err("EACCES"));
    assert_eq!(h.rm(1, "/"), err("EACCES"));
    assert_eq!(h.rm(0, "/"), err("EINVAL"));
    assert_eq!(h.rm(2, "/local/domain/1/data/x"), err("EACCES"));
    // Subtrees go whatever their owners' wishes.
    h.write(0, "/local/domain/1/data/sub/owned0", "z").unwrap();
    h.set_perms(0, "/local/domain/1/data/sub/owned0", "n0")
        .unwrap();
    h.rm(1, "data/sub").unwrap();
    assert_eq!(h.read(0, "/local/domain/1/data/sub"), Err("ENOENT".into()));
    assert_eq!(h.xs.check(), Ok(()));
}

#[test]
fn directory_part_pages_through_long_lists() {
    let mut h = Harness::new();
    let names: Vec<String> = (0..300)
        .map(|i| format!("child-with-a-long-name-{i:04}"))
        .collect();
    for n in &names {
        h.mkdir(0, &format!("/big/{n}")).unwrap();
    }
    // The whole list is too long for one reply.
    assert_eq!(h.dir(0, "/big"), Err("E2BIG".into()));
    let mut got = Vec::new();
    let mut offset = 0usize;
    let mut generation = None;
    loop {
        let mut p = z("/big");
        p.extend_from_slice(&z(&offset.to_string()));
        let r = h.call(0, T::DirectoryPart, 0, &p).unwrap();
        assert!(r.len() <= XENSTORE_PAYLOAD_MAX);
        let nul = r.iter().position(|&b| b == 0).unwrap();
        let g = String::from_utf8(r[..nul].to_vec()).unwrap();
        assert_eq!(*generation.get_or_insert(g.clone()), g);
        let body = &r[nul + 1..];
        let end = body.ends_with(&[0, 0]) || body == [0];
        let chunk: Vec<&[u8]> = body.split(|&b| b == 0).filter(|s| !s.is_empty()).collect();
        for c in &chunk {
            got.push(String::from_utf8(c.to_vec()).unwrap());
        }
        offset += chunk.iter().map(|c| c.len() + 1).sum::<usize>();
        if end {
            break;
        }
    }
    assert_eq!(got, names);
    // Past the end: the generation and an empty list.
    let mut p = z("/big");
    p.extend_from_slice(&z("999999"));
    let r = h.call(0, T::DirectoryPart, 0, &p).unwrap();
    assert!(r.ends_with(&[0, 0]));
    assert_eq!(
        h.call(0, T::DirectoryPart, 0, b"/big\0").unwrap_err(),
        "EINVAL"
    );
}

#[test]
fn payloads_are_parsed_strictly() {
    let mut h = Harness::new();
    h.write(1, "data/a", "1").unwrap();
    for bad in [&b""[..], b"data/a", b"data/a\0\0", b"data/a\0x\0", b"\0"] {
        assert_eq!(h.call(1, T::Read, 0, bad), Err("EINVAL".into()), "{bad:?}");
    }
    assert_eq!(h.call(1, T::Write, 0, b"data/a"), Err("EINVAL".into()));
    assert_eq!(h.call(1, T::Watch, 0, b"data/a\0"), Err("EINVAL".into()));
    assert_eq!(
        h.call(1, T::Watch, 0, b"data/a\0t\0-1\0"),
        Err("EINVAL".into())
    );
    assert_eq!(
        h.call(1, T::Watch, 0, b"a\0t\0\x31\0x\0"),
        Err("EINVAL".into())
    );
    assert_eq!(h.call(1, T::Unwatch, 0, b"a\0t\0x\0"), Err("EINVAL".into()));
    for bad_path in [
        "data/a b",
        "data//a",
        "data/a/",
        "/local/domain/1/data/ä",
        "@x",
    ] {
        assert_eq!(h.read(1, bad_path), Err("EINVAL".into()), "{bad_path}");
        assert_eq!(h.write(1, bad_path, "v"), err("EINVAL"), "{bad_path}");
    }
    // Unknown and reply-only types.
    for ty in [20, 27, 9999, 0xffff, u32::MAX] {
        let m = h.raw(1, ty, 0, b"x\0");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].type_, T::Error.as_raw());
        assert_eq!(m[0].payload, b"ENOSYS\0");
    }
    for ty in [T::WatchEvent, T::Error, T::GetQuota, T::SetQuota] {
        assert_eq!(h.call(1, ty, 0, b""), Err("ENOSYS".into()));
    }
    // Dom0-only requests.
    for ty in [
        T::Introduce,
        T::Release,
        T::IsDomainIntroduced,
        T::Control,
        T::Resume,
        T::SetTarget,
        T::SetFeature,
    ] {
        assert_eq!(h.call(1, ty, 0, b"1\0"), Err("EACCES".into()), "{ty:?}");
    }
    assert_eq!(
        h.call(1, T::GetDomainPath, 0, b"5\0").unwrap(),
        b"/local/domain/5\0"
    );
    assert_eq!(
        h.call(1, T::GetDomainPath, 0, b"70000\0"),
        Err("EINVAL".into())
    );
    assert_eq!(
        h.call(1, T::GetFeature, 0, b"").unwrap(),
        format!("{SERVER_FEATURES}\0").as_bytes()
    );
    assert_eq!(h.call(1, T::GetFeature, 0, b"2\0"), Err("EACCES".into()));
    assert!(h.xs.stats().errors["EINVAL"] > 10);
}

#[test]
fn dom0_over_the_wire() {
    let mut h = Harness::new();
    assert_eq!(h.call(0, T::IsDomainIntroduced, 0, b"1\0").unwrap(), b"T\0");
    assert_eq!(h.call(0, T::IsDomainIntroduced, 0, b"7\0").unwrap(), b"F\0");
    assert_eq!(
        h.call(0, T::IsDomainIntroduced, 0, b"32752\0").unwrap(),
        b"T\0"
    );
    h.ok(0, T::Control, 0, b"check\0").unwrap();
    assert!(
        String::from_utf8(h.call(0, T::Control, 0, b"quota\0").unwrap())
            .unwrap()
            .contains("nodes")
    );
    assert_eq!(
        h.call(0, T::Control, 0, b"live-update\0"),
        Err("EINVAL".into())
    );
    assert_eq!(h.call(0, T::Control, 0, b""), Err("EINVAL".into()));
    // INTRODUCE / RELEASE as the toolstack sends them.
    h.watch(0, "@introduceDomain", "intro").unwrap();
    h.watch(0, "@releaseDomain", "rel").unwrap();
    h.events(0);
    h.ok(0, T::Introduce, 0, b"7\0" as &[u8]).unwrap_err();
    h.ok(0, T::Introduce, 0, b"7\x00123\0-1\0").unwrap_err();
    h.ok(0, T::Introduce, 0, b"0\x00123\0-1\0").unwrap_err();
    h.ok(0, T::Introduce, 0, b"7\x00123\x004\0").unwrap();
    assert_eq!(h.events(0), [event("@introduceDomain", "intro")]);
    assert_eq!(h.call(0, T::IsDomainIntroduced, 0, b"7\0").unwrap(), b"T\0");
    h.write(7, "/local/domain/7/x", "no").unwrap_err();
    h.ok(0, T::Resume, 0, b"7\0").unwrap();
    assert_eq!(h.ok(0, T::Release, 0, b"0\0"), err("EINVAL"));
    assert_eq!(h.ok(0, T::Release, 0, b"8\0"), err("ENOENT"));
    h.ok(0, T::Release, 0, b"7\0").unwrap();
    assert_eq!(h.events(0), [event("@releaseDomain", "rel")]);
    assert!(h.xs.handle(7, header(T::Read, 1, 0, 0), b"").is_err());
    assert_eq!(h.call(0, T::GetFeature, 0, b"1\0").unwrap(), b"14\0");
    assert_eq!(h.call(0, T::GetFeature, 0, b"8\0"), Err("ENOENT".into()));
    assert_eq!(
        h.call(0, T::SetFeature, 0, b"1\x0014\0"),
        Err("EBUSY".into())
    );
}

#[test]
fn set_target_shares_the_targets_rights() {
    let mut h = Harness::new();
    h.write(1, "data/x", "1").unwrap();
    assert_eq!(h.read(2, "/local/domain/1/data/x"), Err("EACCES".into()));
    assert_eq!(h.ok(0, T::SetTarget, 0, b"2\x009\0"), err("ENOENT"));
    h.ok(0, T::SetTarget, 0, b"2\x001\0").unwrap();
    assert_eq!(h.read(2, "/local/domain/1/data/x").unwrap(), "1");
    h.write(2, "/local/domain/1/data/x", "2").unwrap();
}

#[test]
fn watches_fire_on_the_node_its_descendants_and_removal() {
    let mut h = Harness::new();
    h.watch(1, "data", "rel").unwrap();
    assert_eq!(
        h.events(1),
        [event("data", "rel")],
        "initial event, relative"
    );
    h.watch(1, "/local/domain/1/data/x", "abs").unwrap();
    assert_eq!(h.events(1), [event("/local/domain/1/data/x", "abs")]);
    assert_eq!(h.watch(1, "data", "rel"), err("EEXIST"));
    h.watch(1, "data", "rel2").unwrap();
    h.events(1);

    h.write(1, "data/x/y", "1").unwrap();
    let mut ev = h.events(1);
    ev.sort();
    assert_eq!(
        ev,
        [
            event("/local/domain/1/data/x/y", "abs"),
            event("data/x/y", "rel"),
            event("data/x/y", "rel2"),
        ]
    );
    // A change by someone else reaches the watcher's queue.
    h.write(0, "/local/domain/1/data/other", "2").unwrap();
    let mut ev = h.drain(1);
    ev.sort();
    assert_eq!(
        ev,
        [event("data/other", "rel"), event("data/other", "rel2")]
    );
    h.unwatch(1, "data", "rel2").unwrap();
    assert_eq!(h.unwatch(1, "data", "rel2"), err("ENOENT"));

    // Removing a parent: the removed node's own watchers hear their exact path,
    // watchers above hear the removed top.
    h.write(1, "data/x/y/z", "3").unwrap();
    h.events(1);
    h.watch(1, "data/x/y/z", "deep").unwrap();
    h.watch(1, "data/x/y/nonexistent", "never").unwrap();
    h.events(1);
    h.rm(1, "data/x").unwrap();
    let mut ev = h.events(1);
    ev.sort();
    assert_eq!(
        ev,
        [
            event("/local/domain/1/data/x", "abs"),
            event("data/x", "rel"),
            event("data/x/y/z", "deep"),
        ]
    );
    // Set-permissions fires too.
    h.write(1, "data/p", "").unwrap();
    h.events(1);
    h.set_perms(1, "data/p", "n1 r2").unwrap();
    assert_eq!(h.events(1), [event("data/p", "rel")]);
    // RESET_WATCHES forgets them all.
    h.ok(1, T::ResetWatches, 0, b"").unwrap();
    h.write(1, "data/q", "").unwrap();
    assert_eq!(h.events(1), []);
}

#[test]
fn watch_depth_and_ancestors() {
    let mut h = Harness::new();
    h.ok(1, T::Watch, 0, b"data\0d0\x000\0").unwrap();
    h.ok(1, T::Watch, 0, b"data\0d1\x001\0").unwrap();
    h.events(1);
    h.write(1, "data", "").unwrap();
    let mut ev = h.events(1);
    ev.sort();
    assert_eq!(ev, [event("data", "d0"), event("data", "d1")]);
    h.write(1, "data/a", "").unwrap();
    assert_eq!(h.events(1), [event("data/a", "d1")]);
    h.write(1, "data/a/b", "").unwrap();
    assert_eq!(h.events(1), []);
    // A watch on the root hears everything the watcher may read.
    h.watch(2, "/", "root").unwrap();
    h.events(2);
    h.write(1, "data/a/b", "x").unwrap();
    assert_eq!(h.drain(2), [], "guest 2 cannot read guest 1's data");
    h.write(2, "data/mine", "x").unwrap();
    assert_eq!(h.events(2), [event("/local/domain/2/data/mine", "root")]);
}

#[test]
fn watches_respect_permissions() {
    let mut h = Harness::new();
    h.write(1, "data/s", "").unwrap();
    h.watch(2, "/local/domain/1/data/s", "w").unwrap();
    assert_eq!(h.events(2).len(), 1, "the initial event is always sent");
    h.write(1, "data/s", "secret").unwrap();
    assert_eq!(h.drain(2), []);
    h.set_perms(1, "data/s", "n1 r2").unwrap();
    assert_eq!(h.drain(2), [event("/local/domain/1/data/s", "w")]);
    h.write(1, "data/s", "shared").unwrap();
    assert_eq!(h.drain(2), [event("/local/domain/1/data/s", "w")]);
    // Losing access still tells (old permissions).
    h.set_perms(1, "data/s", "n1").unwrap();
    assert_eq!(h.drain(2), [event("/local/domain/1/data/s", "w")]);
    h.write(1, "data/s", "again").unwrap();
    assert_eq!(h.drain(2), []);
}

#[test]
fn identical_pending_events_are_coalesced() {
    let mut h = Harness::new();
    h.watch(2, "data", "w").unwrap();
    h.events(2);
    for i in 0..5 {
        h.write(2, "data/x", &i.to_string()).unwrap();
        // Dom0 makes the change: guest 2 does not read its output in between.
    }
    assert_eq!(h.events(2).len(), 5, "delivered with each reply");
    for i in 0..5 {
        h.write(0, "/local/domain/2/data/x", &i.to_string())
            .unwrap();
    }
    assert_eq!(h.drain(2), [event("data/x", "w")]);
    assert_eq!(h.xs.stats().watch_events_coalesced, 4);
}

#[test]
fn special_watches() {
    let mut h = Harness::new();
    h.watch(1, "@releaseDomain", "rel").unwrap();
    h.ok(1, T::Watch, 0, b"@releaseDomain\0reldom\x001\0")
        .unwrap();
    h.watch(1, "@releaseDomain/2", "two").unwrap();
    h.watch(1, "@introduceDomain", "intro").unwrap();
    assert_eq!(h.events(1).len(), 4);
    let mut d = h.xs.dom0();
    d.watch("@introduceDomain", "i").unwrap();
    d.watch("@releaseDomain", "r").unwrap();
    assert_eq!(d.take_events().len(), 2);

    h.xs.introduce_domain(5, "five").unwrap();
    assert_eq!(
        h.xs.take_dom0_events(),
        [WatchEvent {
            path: "@introduceDomain".into(),
            token: "i".into()
        }]
    );
    assert_eq!(h.drain(1), [], "@introduceDomain is dom0's unless shared");
    h.xs.release_domain(2).unwrap();
    let mut ev = h.drain(1);
    ev.sort();
    assert_eq!(
        ev,
        [
            event("@releaseDomain", "rel"),
            event("@releaseDomain/2", "reldom"),
            event("@releaseDomain/2", "two"),
        ]
    );
    assert_eq!(h.xs.take_dom0_events().len(), 1);
    h.xs.release_domain(5).unwrap();
    let ev = h.drain(1);
    assert_eq!(
        ev,
        [
            event("@releaseDomain", "rel"),
            event("@releaseDomain/5", "reldom")
        ]
    );
}

#[test]
fn transactions_commit_abort_and_conflict() {
    let mut h = Harness::new();
    h.watch(1, "data", "w").unwrap();
    h.events(1);
    let tx = h.start(1).unwrap();
    assert_eq!(tx, 1);
    h.write_tx(1, tx, "data/a", "1").unwrap();
    assert_eq!(h.read_tx(1, tx, "data/a").unwrap(), "1");
    assert_eq!(
        h.read(1, "data/a"),
        Err("ENOENT".into()),
        "invisible outside"
    );
    assert_eq!(h.events(1), [], "no event before commit");
    h.end(1, tx, true).unwrap();
    assert_eq!(h.events(1), [event("data/a", "w")]);
    assert_eq!(h.read(1, "data/a").unwrap(), "1");
    assert_eq!(h.end(1, tx, true), err("ENOENT"), "ended");

    // Abort discards.
    let tx = h.start(1).unwrap();
    h.write_tx(1, tx, "data/a", "2").unwrap();
    h.rm_tx(1, tx, "data/a").unwrap();
    assert_eq!(h.read_tx(1, tx, "data/a"), Err("ENOENT".into()));
    h.end(1, tx, false).unwrap();
    assert_eq!(h.read(1, "data/a").unwrap(), "1");
    assert_eq!(h.events(1), []);

    // A conflicting write makes commit fail; a retry succeeds.
    let tx = h.start(1).unwrap();
    assert_eq!(h.read_tx(1, tx, "data/a").unwrap(), "1");
    h.write(0, "/local/domain/1/data/a", "from dom0").unwrap();
    h.write_tx(1, tx, "data/b", "derived").unwrap();
    assert_eq!(h.end(1, tx, true), err("EAGAIN"));
    assert_eq!(h.read(1, "data/b"), Err("ENOENT".into()));
    let tx = h.start(1).unwrap();
    assert_eq!(h.read_tx(1, tx, "data/a").unwrap(), "from dom0");
    h.write_tx(1, tx, "data/b", "derived").unwrap();
    h.end(1, tx, true).unwrap();
    assert_eq!(h.read(1, "data/b").unwrap(), "derived");
    assert_eq!(h.xs.stats().transaction_conflicts, 1);

    // A node read as missing and created meanwhile conflicts too.
    let tx = h.start(1).unwrap();
    assert_eq!(h.read_tx(1, tx, "data/c"), Err("ENOENT".into()));
    h.write(1, "data/c", "now").unwrap();
    h.write_tx(1, tx, "data/d", "x").unwrap();
    assert_eq!(h.end(1, tx, true), err("EAGAIN"));

    // Two transactions: the second to commit loses (transaction.c example 4).
    h.write(1, "data/A", "a").unwrap();
    h.write(1, "data/B", "b").unwrap();
    let t1 = h.start(1).unwrap();
    let t2 = h.start(1).unwrap();
    assert_ne!(t1, t2);
    h.read_tx(1, t1, "data/A").unwrap();
    h.read_tx(1, t2, "data/B").unwrap();
    h.write_tx(1, t1, "data/B", "1").unwrap();
    h.write_tx(1, t2, "data/A", "2").unwrap();
    h.end(1, t1, true).unwrap();
    assert_eq!(h.end(1, t2, true), err("EAGAIN"));
    assert_eq!(h.read(1, "data/A").unwrap(), "a");
    assert_eq!(h.read(1, "data/B").unwrap(), "1");

    // Removal inside a transaction fires on commit, with the watchers' paths.
    h.write(1, "data/r/s", "").unwrap();
    h.events(1);
    let tx = h.start(1).unwrap();
    h.rm_tx(1, tx, "data/r").unwrap();
    assert_eq!(h.events(1), []);
    h.end(1, tx, true).unwrap();
    assert_eq!(h.events(1), [event("data/r", "w")]);
    assert_eq!(h.xs.check(), Ok(()));
}

#[test]
fn transaction_ids_and_errors() {
    let mut h = Harness::new();
    assert_eq!(h.read_tx(1, 42, "data"), Err("ENOENT".into()));
    assert_eq!(h.write_tx(1, 42, "data/x", "v"), err("ENOENT"));
    let tx = h.start(1).unwrap();
    assert_eq!(
        h.call(1, T::TransactionStart, tx, b"\0"),
        Err("EBUSY".into()),
        "no nesting"
    );
    assert_eq!(
        h.call(1, T::TransactionStart, 42, b"\0"),
        Err("ENOENT".into())
    );
    assert_eq!(
        h.call(1, T::TransactionEnd, tx, b"X\0"),
        Err("EINVAL".into())
    );
    assert_eq!(
        h.call(1, T::TransactionEnd, 0, b"T\0"),
        Err("ENOENT".into())
    );
    // Another domain cannot use it.
    assert_eq!(h.read_tx(2, tx, "data"), Err("ENOENT".into()));
    // WATCH ignores the transaction id.
    let mut p = z("data");
    p.extend_from_slice(&z("t"));
    h.ok(1, T::Watch, 777, &p).unwrap();
    // Watch events from a transaction's writes wait for the commit even for others.
    h.watch(0, "/local/domain/1/data", "d0").unwrap();
    h.events(0);
    h.write_tx(1, tx, "data/new", "1").unwrap();
    assert_eq!(h.drain(0), []);
    h.end(1, tx, true).unwrap();
    assert_eq!(h.drain(0), [event("/local/domain/1/data/new", "d0")]);
    // RESET_WATCHES ends open transactions.
    let tx = h.start(1).unwrap();
    h.ok(1, T::ResetWatches, 0, b"").unwrap();
    assert_eq!(h.end(1, tx, false), err("ENOENT"));
}

#[test]
fn quotas() {
    let q = Quotas {
        nodes: 40,
        watches: 3,
        transactions: 2,
        transaction_nodes: 8,
        node_size: 200,
        path_max: 40,
        ..Quotas::default()
    };
    let mut h = Harness::with_quotas(q);
    // Nodes: guest 1 owns the 11 libxl gave it.
    let mut made = 0;
    loop {
        match h.write(1, &format!("data/n{made}"), "") {
            Ok(()) => made += 1,
            Err(e) => {
                assert_eq!(e, "ENOSPC");
                break;
            }
        }
    }
    assert_eq!(made, 40 - 11);
    // Creating several at once is all or nothing.
    h.rm(1, "data/n0").unwrap();
    assert_eq!(h.write(1, "data/deep/er", ""), err("ENOSPC"));
    assert_eq!(h.read(1, "data/deep"), Err("ENOENT".into()));
    h.write(1, "data/n0", "").unwrap();
    // Dom0 is exempt.
    h.write(0, "/local/domain/1/data/by0", "").unwrap();
    for i in 0..29 {
        h.rm(1, &format!("data/n{i}")).unwrap();
    }
    // Node size.
    assert_eq!(h.write(1, "data/big", &"x".repeat(200)), err("ENOSPC"));
    h.write(1, "data/big", &"x".repeat(100)).unwrap();
    h.write(0, "/local/domain/1/data/big", &"x".repeat(300))
        .unwrap();
    // Path length below the domain's home.
    assert_eq!(
        h.write(1, &format!("data/{}", "p".repeat(40)), ""),
        err("EINVAL")
    );
    h.write(1, &format!("data/{}", "p".repeat(30)), "").unwrap();
    // Permission entries.
    assert_eq!(
        h.set_perms(1, "data/big", "n1 r2"),
        err("ENOSPC"),
        "node size"
    );
    h.write(1, "data/small", "").unwrap();
    assert_eq!(
        h.set_perms(1, "data/small", "n1 r2 r0 r1 b2 b0"),
        err("ENOSPC")
    );
    h.set_perms(1, "data/small", "n1 r2 r0 r1 b2").unwrap();
    // Watches.
    for i in 0..3 {
        h.watch(1, "data", &format!("t{i}")).unwrap();
    }
    assert_eq!(h.watch(1, "data", "t3"), err("ENOSPC"));
    h.watch(0, "data", "dom0 is exempt").unwrap();
    // Transactions.
    let t1 = h.start(1).unwrap();
    let _t2 = h.start(1).unwrap();
    assert_eq!(h.start(1), Err("ENOSPC".into()));
    // Nodes per transaction: the transaction fails for good.
    let mut failed = false;
    for i in 0..10 {
        if let Err(e) = h.write_tx(1, t1, &format!("data/t{i}"), "") {
            assert_eq!(e, "ENOSPC");
            failed = true;
            break;
        }
    }
    assert!(failed);
    assert_eq!(h.end(1, t1, true), err("ENOMEM"));
    assert_eq!(h.xs.check(), Ok(()));
}

#[test]
fn node_quota_is_checked_again_at_commit() {
    let q = Quotas {
        nodes: 13,
        ..Quotas::default()
    };
    let mut h = Harness::with_quotas(q);
    let tx = h.start(1).unwrap();
    h.write_tx(1, tx, "data/a", "").unwrap();
    h.write(1, "data/b", "").unwrap();
    h.write(1, "data/c", "").unwrap();
    assert_eq!(h.end(1, tx, true), err("ENOSPC"));
}

#[test]
fn backpressure_stops_reading_and_bounds_events() {
    let q = Quotas {
        outstanding: 3,
        output_bytes: 1024,
        ..Quotas::default()
    };
    let mut xs = Xenstored::new(q);
    xs.introduce_domain(1, "g").unwrap();
    for i in 0..3 {
        assert!(xs.can_accept_request(1));
        xs.handle(1, header(T::Read, i, 0, 5), b"name\0").unwrap();
    }
    assert!(!xs.can_accept_request(1), "3 unread replies");
    let out = xs.take_output(1, 10);
    assert_eq!(out.len(), 10);
    assert!(
        !xs.can_accept_request(1),
        "a reply half taken is still unread"
    );
    let rest = xs.take_output(1, usize::MAX);
    assert_eq!(parse_stream(&[out, rest].concat()).len(), 3);
    assert!(xs.can_accept_request(1));

    // Events beyond the output bound are dropped, and reading stops at it.
    xs.handle(1, header(T::Watch, 9, 0, 7), b"data\0w\0")
        .unwrap();
    let mut d = xs.dom0();
    for i in 0..100 {
        d.write(None, &format!("/local/domain/1/data/k{i}"), b"v")
            .unwrap();
    }
    assert!(xs.pending_output(1) <= 1024);
    assert!(xs.stats().watch_events_dropped > 0);
    let msgs = parse_stream(&xs.take_output(1, usize::MAX));
    assert!(msgs.len() > 2 && msgs.len() < 100);
    assert!(xs.can_accept_request(1));
}

#[test]
fn dom0_api() {
    let mut xs = Xenstored::new(Quotas::default());
    xs.introduce_domain(1, "g").unwrap();
    let mut d = xs.dom0();
    let be = "/local/domain/0/backend/vbd/1/51712";
    d.write(None, &format!("{be}/state"), b"1").unwrap();
    d.set_perms(
        None,
        be,
        &Perms::new(0, Access::None).grant(1, Access::Read),
    )
    .unwrap();
    assert_eq!(d.read(None, &format!("{be}/state")).unwrap(), b"1");
    assert_eq!(d.read(None, "backend/vbd/1/51712/state").unwrap(), b"1");
    assert_eq!(d.directory(None, be).unwrap(), ["state"]);
    assert_eq!(d.get_perms(None, be).unwrap().to_string(), "n0 r1");
    assert_eq!(
        d.read(None, "/nope").unwrap_err(),
        XsError::Errno(XenErrno::ENOENT)
    );
    assert_eq!(
        d.write(None, "/x", &[0; XENSTORE_PAYLOAD_MAX + 1])
            .unwrap_err()
            .errno(),
        XenErrno::E2BIG
    );
    assert_eq!(
        d.write(None, "bad path", b"").unwrap_err().errno(),
        XenErrno::EINVAL
    );
    // The frontend directory as libxl makes it: the guest's, the backend may read.
    let fe = "/local/domain/1/device/vbd/51712";
    d.mkdir(None, fe).unwrap();
    d.set_perms(
        None,
        fe,
        &Perms::new(1, Access::None).grant(0, Access::Read),
    )
    .unwrap();
    d.watch("/local/domain/1/device/vbd/51712", "fe").unwrap();
    d.watch("backend", "be-rel").unwrap();
    assert_eq!(
        d.watch("backend", "be-rel").unwrap_err().errno(),
        XenErrno::EEXIST
    );
    assert_eq!(d.take_events().len(), 2);

    // The frontend writes its state over its ring.
    let fe_state = b"/local/domain/1/device/vbd/51712/state\x004";
    xs.handle(1, header(T::Write, 1, 0, fe_state.len()), fe_state)
        .unwrap();
    assert_eq!(
        xs.take_dom0_events(),
        [WatchEvent {
            path: "/local/domain/1/device/vbd/51712/state".into(),
            token: "fe".into()
        }]
    );
    let mut d = xs.dom0();
    d.write(None, &format!("{be}/state"), b"2").unwrap();
    assert_eq!(
        d.take_events(),
        [WatchEvent {
            path: "backend/vbd/1/51712/state".into(),
            token: "be-rel".into()
        }]
    );
    d.unwatch("backend", "be-rel").unwrap();
    assert_eq!(
        d.unwatch("backend", "be-rel").unwrap_err().errno(),
        XenErrno::ENOENT
    );

    // A transaction loop as a backend writes it.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tx = d.transaction_start().unwrap();
        let state = d.read(Some(tx), &format!("{be}/state")).unwrap();
        if attempts == 1 {
            // Someone else changes it meanwhile.
            d.write(None, &format!("{be}/state"), b"3").unwrap();
        }
        let next = (state[0] - b'0' + 1).to_string();
        d.write(Some(tx), &format!("{be}/state"), next.as_bytes())
            .unwrap();
        match d.transaction_end(tx, true) {
            Ok(()) => break,
            Err(e) => assert_eq!(e.errno(), XenErrno::EAGAIN),
        }
    }
    assert_eq!(attempts, 2);
    assert_eq!(d.read(None, &format!("{be}/state")).unwrap(), b"4");
    let tx = d.transaction_start().unwrap();
    d.rm(Some(tx), be).unwrap();
    d.transaction_end(tx, false).unwrap();
    assert_eq!(
        d.transaction_end(tx, false).unwrap_err().errno(),
        XenErrno::ENOENT
    );
    assert!(d.read(None, be).is_ok());
    d.rm(None, be).unwrap();
    assert!(d.read(None, be).is_err());
    assert_eq!(xs.check(), Ok(()));
}

#[test]
fn release_cleans_up_after_a_domain() {
    let mut h = Harness::new();
    let mut d = h.xs.dom0();
    // A backend area the guest may read, a node it owns outside its home.
    d.write(None, "/local/domain/0/backend/x/1/state", b"1")
        .unwrap();
    d.set_perms(
        None,
        "/local/domain/0/backend/x/1",
        &Perms::new(0, Access::None)
            .grant(1, Access::Read)
            .grant(2, Access::Read),
    )
    .unwrap();
    d.mkdir(None, "/shared/owned-by-1/child").unwrap();
    d.set_perms(None, "/shared/owned-by-1", &Perms::new(1, Access::None))
        .unwrap();
    d.watch("/local/domain/1", "home").unwrap();
    d.take_events();
    h.watch(1, "data", "w").unwrap();
    let tx = h.start(1).unwrap();
    h.write_tx(1, tx, "data/pending", "x").unwrap();

    h.xs.release_domain(1).unwrap();
    assert!(!h.xs.is_domain_introduced(1));
    assert!(h.xs.handle(1, header(T::Read, 1, 0, 5), b"name\0").is_err());
    assert_eq!(h.xs.pending_output(1), 0);
    let mut d = h.xs.dom0();
    assert!(d.read(None, "/local/domain/1").is_err());
    assert!(d.read(None, "/libxl/1").is_err());
    assert!(d.read(None, "/shared/owned-by-1").is_err());
    assert!(d.read(None, "/shared").is_ok());
    assert_eq!(
        d.get_perms(None, "/local/domain/0/backend/x/1")
            .unwrap()
            .to_string(),
        "n0 r2"
    );
    assert!(d.take_events().contains(&WatchEvent {
        path: "/local/domain/1".into(),
        token: "home".into()
    }));
    assert_eq!(
        h.xs.release_domain(1).unwrap_err().errno(),
        XenErrno::ENOENT
    );
    assert_eq!(
        h.xs.release_domain(0).unwrap_err().errno(),
        XenErrno::EINVAL
    );
    assert_eq!(h.xs.stats().transactions_aborted, 1);
    // A new domain with the same id starts clean.
    h.xs.introduce_domain(1, "again").unwrap();
    assert_eq!(h.read(1, "name").unwrap(), "again");
    assert_eq!(h.read(1, "data/pending"), Err("ENOENT".into()));
    assert_eq!(h.xs.check(), Ok(()));
}

#[test]
fn oversized_replies_are_e2big() {
    let mut h = Harness::new();
    let long = "v".repeat(3000);
    h.write(0, &format!("/big/{long}"), "").unwrap();
    h.write(0, &format!("/big/{long}x"), "").unwrap();
    assert_eq!(h.dir(0, "/big"), Err("E2BIG".into()));
    // A watch event that would be too long is not sent.
    let token = "t".repeat(3000);
    h.watch(0, "/big", &token).unwrap();
    h.events(0);
    h.write(0, &format!("/big/{long}"), "x").unwrap();
    assert_eq!(h.events(0), []);
}

#[test]
fn stats_count_requests_and_errors() {
    let mut h = Harness::new();
    h.read(1, "name").unwrap();
    h.read(1, "nope").unwrap_err();
    h.raw(1, 9999, 0, b"");
    let s = h.xs.stats();
    assert_eq!(s.requests["READ"], 2);
    assert_eq!(s.requests["UNKNOWN"], 1);
    assert_eq!(s.errors["ENOENT"], 1);
    assert_eq!(s.errors["ENOSYS"], 1);
    assert_eq!(s.domains_introduced, 2);
    assert!(serde_json::to_string(s).unwrap().contains("\"READ\":2"));
}

use crate::testing::Rng;

/// Picks from a vocabulary.
trait Pick {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str;
}

impl Pick for Rng {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A payload that is mostly well-formed: a few strings from a vocabulary of paths,
/// tokens, numbers and junk.
fn random_payload(rng: &mut Rng) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "data",
        "data/a",
        "data/a/b",
        "/local/domain/1/data/x",
        "/local/domain/2",
        "/",
        "@releaseDomain",
        "@introduceDomain",
        "name",
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
        "",
        "//",
        "data/",
        "x y",
        "check",
    ];
    let mut p = Vec::new();
    for _ in 0..rng.below(4) {
        p.extend_from_slice(rng.pick(WORDS).as_bytes());
        if rng.below(8) != 0 {
            p.push(0);
        }
    }
    if rng.below(10) == 0 {
        for _ in 0..rng.below(64) {
            p.push(rng.next_u64() as u8);
        }
    }
    p
}

#[test]
fn hostile_requests_never_panic_or_corrupt() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut xs = Xenstored::new(Quotas {
        nodes: 60,
        ..Quotas::default()
    });
    xs.introduce_domain(1, "a").unwrap();
    xs.introduce_domain(2, "b").unwrap();
    let mut streams = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..20_000u32 {
        let dom = [0, 1, 2][rng.below(3) as usize];
        let type_ = if rng.below(20) == 0 {
            rng.next_u64() as u32
        } else {
            rng.below(28) as u32
        };
        // Keep the domains alive: they are the subject under test.
        if dom == 0 && (type_ == T::Release.as_raw() || type_ == T::Introduce.as_raw()) {
            continue;
        }
        let tx_id = if rng.below(4) == 0 {
            rng.below(4) as u32
        } else {
            0
        };
        let payload = random_payload(&mut rng);
        let h = XsdSockmsg {
            type_,
            req_id: i,
            tx_id,
            len: payload.len() as u32,
        };
        xs.handle(dom, h, &payload).unwrap();
        // Taken in arbitrary pieces, the output is a stream of whole messages.
        let max = if rng.below(3) == 0 {
            rng.below(5000) as usize
        } else {
            usize::MAX
        };
        let buf = &mut streams[usize::from(dom)];
        buf.extend(xs.take_output(dom, max));
        while let Some(h) = XsdSockmsg::from_prefix(buf) {
            assert!(h.len as usize <= XENSTORE_PAYLOAD_MAX);
            assert!(
                h.type_ == type_
                    || h.type_ == T::Error.as_raw()
                    || h.type_ == T::WatchEvent.as_raw()
                    || h.req_id < i,
                "unexpected message {h:?}"
            );
            let len = 16 + h.len as usize;
            if buf.len() < len {
                break;
            }
            buf.drain(..len);
        }
        if i % 1000 == 0 {
            assert_eq!(xs.check(), Ok(()), "after {i} requests");
        }
    }
    assert_eq!(xs.check(), Ok(()));
    let mut d = xs.dom0();
    d.rm(None, "/local/domain/1/data").unwrap();
    assert_eq!(xs.check(), Ok(()));
}

// ---- Rings ----

/// A daemon with guest 1 and a ring for it.
fn ring_setup(q: Quotas) -> (Xenstored, RingServer, GuestRing) {
    let mut xs = Xenstored::new(q);
    xs.introduce_domain(1, "g").unwrap();
    let mut server = RingServer::new(1);
    let guest = GuestRing::new();
    server.attach(guest.memory());
    (xs, server, guest)
}

fn request(type_: T, req_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = header(type_, req_id, 0, payload.len()).to_bytes().to_vec();
    m.extend_from_slice(payload);
    m
}

#[test]
fn ring_round_trip_and_setup() {
    let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
    assert_eq!(guest.server_features(), SERVER_FEATURES);
    assert_eq!(guest.send(&request(T::Read, 7, b"name\0")), 21);
    let r = server.pump(&mut xs, guest.memory());
    assert_eq!((r.consumed, r.requests, r.notify), (21, 1, true));
    assert_eq!(guest.req_cons(), 21);
    let msgs = parse_stream(&guest.receive());
    assert_eq!(
        msgs,
        [Msg {
            type_: T::Read.as_raw(),
            req_id: 7,
            tx_id: 0,
            payload: b"g".to_vec()
        }]
    );
    assert_eq!(r.produced, 17);
    // Nothing to do: no notification.
    let r = server.pump(&mut xs, guest.memory());
    assert_eq!(r, PumpResult::default());
}

#[test]
fn ring_requests_across_the_wrap_and_in_pieces() {
    let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
    // Each write request is 16 + 18 + 12 = 46 bytes: dozens cross the wrap.
    let mut replies = Vec::new();
    for i in 0..200u32 {
        let mut p = z(&format!("data/key{:05}", i % 100));
        p.extend_from_slice(format!("value-{i:05}").as_bytes());
        let m = request(T::Write, i, &p);
        // Send it in two pieces with a pump in between: a header without its
        // payload waits.
        let cut = if i % 3 == 0 { 10 } else { 20 };
        assert_eq!(guest.send(&m[..cut]), cut);
        let r = server.pump(&mut xs, guest.memory());
        assert_eq!(r.requests, 0);
        assert_eq!(guest.send(&m[cut..]), m.len() - cut);
        let r = server.pump(&mut xs, guest.memory());
        assert_eq!(r.requests, 1);
        replies.extend(parse_stream(&guest.receive()));
    }
    assert_eq!(replies.len(), 200);
    assert!(
        replies
            .iter()
            .enumerate()
            .all(|(i, m)| m.req_id == i as u32 && m.payload == b"OK\0")
    );
    assert!(guest.req_cons() > 8 * XENSTORE_RING_SIZE as u32);
    let mut d = xs.dom0();
    assert_eq!(
        d.read(None, "/local/domain/1/data/key00042").unwrap(),
        b"value-00142"
    );
}

#[test]
fn ring_carries_messages_bigger_than_itself() {
    let (mut xs, mut server, mut guest) = ring_setup(Quotas {
        node_size: 0,
        ..Quotas::default()
    });
    let value = vec![b'v'; XENSTORE_PAYLOAD_MAX - 10];
    let mut p = z("data/big");
    p.extend_from_slice(&value);
    let m = request(T::Write, 1, &p);
    let mut sent = 0;
    let mut out = Vec::new();
    while sent < m.len() {
        sent += guest.send(&m[sent..]);
        server.pump(&mut xs, guest.memory());
        out.extend(guest.receive());
    }
    let read = request(T::Read, 2, b"data/big\0");
    guest.send(&read);
    // The reply (4102 bytes) is bigger than the ring: it comes in pieces.
    for _ in 0..10 {
        server.pump(&mut xs, guest.memory());
        out.extend(guest.receive());
    }
    let msgs = parse_stream(&out);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1].payload, value);
}

#[test]
fn ring_hostile_producer_index_stops_the_ring() {
    let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
    guest.set_req_prod(XENSTORE_RING_SIZE as u32 + 1);
    let r = server.pump(&mut xs, guest.memory());
    assert_eq!(r.error, Some(XENSTORE_ERROR_RINGIDX));
    assert!(r.notify);
    assert_eq!(guest.error(), XENSTORE_ERROR_RINGIDX);
    assert_eq!(server.error(), Some(XENSTORE_ERROR_RINGIDX));
    assert!(!xs.is_connected(1));
    assert_eq!(xs.stats().protocol_errors, 1);
    // Nothing more is served.
    guest.set_req_prod(0);
    assert_eq!(server.pump(&mut xs, guest.memory()), PumpResult::default());
    // The index just behind ours (wrapped) is as bad.
    let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
    guest.set_req_prod(u32::MAX);
    assert_eq!(
        server.pump(&mut xs, guest.memory()).error,
        Some(XENSTORE_ERROR_RINGIDX)
    );
}

#[test]
fn ring_oversized_header_is_a_protocol_error() {
    let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
    guest.send(&request(T::Read, 1, b"name\0"));
    let mut bad = header(T::Write, 2, 0, XENSTORE_PAYLOAD_MAX + 1)
        .to_bytes()
        .to_vec();
    bad.extend_from_slice(b"junk");
    guest.send(&bad);
    let r = server.pump(&mut xs, guest.memory());
    assert_eq!(r.requests, 1, "the good request before it is served");
    assert_eq!(r.error, Some(XENSTORE_ERROR_PROTO));
    assert_eq!(guest.error(), XENSTORE_ERROR_PROTO);
    assert!(!xs.is_connected(1));
    assert!(xs.handle(1, header(T::Read, 1, 0, 0), b"").is_err());
}

#[test]
fn ring_hostile_consumer_index_stops_the_ring() {
    let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
    guest.send(&request(T::Read, 1, b"name\0"));
    guest.set_rsp_cons(5000);
    let r = server.pump(&mut xs, guest.memory());
    assert_eq!(r.error, Some(XENSTORE_ERROR_RINGIDX));
    assert_eq!(guest.error(), XENSTORE_ERROR_RINGIDX);
}

#[test]
fn ring_backpressure_when_the_guest_never_reads() {
    let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
    let m = request(T::Read, 1, b"name\0");
    let mut sent = 0;
    for _ in 0..200 {
        if guest.request_space() >= m.len() {
            guest.send(&m);
            sent += 1;
        }
        server.pump(&mut xs, guest.memory());
    }
    // The rsp ring holds 60 replies of 17 bytes (and 4 bytes of one more); 20 more
    // are queued; then reading stops and the req ring fills up.
    let reply = 17;
    let handled = xs.stats().requests["READ"];
    assert_eq!(handled, (XENSTORE_RING_SIZE / reply + 20) as u64);
    assert_eq!(sent, handled as usize + XENSTORE_RING_SIZE / m.len());
    assert!(xs.pending_output(1) <= 20 * reply);
    // The guest reads: service resumes, and every request gets its reply.
    let mut rx = Receiver::default();
    let mut replies = 0;
    for _ in 0..200 {
        replies += rx.count(&mut guest);
        if guest.request_space() >= m.len() {
            guest.send(&m);
            sent += 1;
        }
        server.pump(&mut xs, guest.memory());
    }
    while replies < sent {
        server.pump(&mut xs, guest.memory());
        let n = rx.count(&mut guest);
        assert!(n > 0, "stalled at {replies} of {sent}");
        replies += n;
    }
    assert_eq!(replies, sent);
    assert_eq!(xs.stats().total_errors(), 0);
}

/// The guest's receive side: whole messages counted, a partial one kept.
#[derive(Default)]
struct Receiver {
    buf: Vec<u8>,
}

impl Receiver {
    fn count(&mut self, guest: &mut GuestRing) -> usize {
        self.buf.extend(guest.receive());
        let mut count = 0;
        while let Some(h) = XsdSockmsg::from_prefix(&self.buf) {
            let len = 16 + h.len as usize;
            if self.buf.len() < len {
                break;
            }
            self.buf.drain(..len);
            count += 1;
        }
        count
    }
}

#[test]
fn ring_watch_events_reach_the_guest() {
    let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
    guest.send(&request(T::Watch, 1, b"data\0tok\0"));
    server.pump(&mut xs, guest.memory());
    let msgs = parse_stream(&guest.receive());
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].payload, b"OK\0");
    assert_eq!(msgs[1].type_, T::WatchEvent.as_raw());
    assert_eq!(msgs[1].payload, b"data\0tok\0");
    xs.dom0()
        .write(None, "/local/domain/1/data/x", b"1")
        .unwrap();
    let r = server.pump(&mut xs, guest.memory());
    assert!(r.notify);
    assert_eq!(parse_stream(&guest.receive())[0].payload, b"data/x\0tok\0");
    // A released domain's ring is no longer served.
    xs.release_domain(1).unwrap();
    guest.send(&request(T::Read, 2, b"name\0"));
    assert_eq!(server.pump(&mut xs, guest.memory()), PumpResult::default());
}

#[test]
fn ring_too_small_page_fails_cleanly() {
    let mut xs = Xenstored::new(Quotas::default());
    xs.introduce_domain(1, "g").unwrap();
    let small = pv_drivers::shmem::HeapSharedMemory::new(1024);
    let mut server = RingServer::new(1);
    assert_eq!(server.pump(&mut xs, &small), PumpResult::default());
    assert_eq!(
        server.error(),
        Some(pv_drivers::abi::xs_wire::XENSTORE_ERROR_COMM)
    );
}

#[test]
fn ring_hostile_byte_streams_never_panic() {
    for seed in 1..40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (mut xs, mut server, mut guest) = ring_setup(Quotas::default());
        for step in 0..300 {
            match rng.below(10) {
                0 => {
                    // Raw garbage.
                    let junk: Vec<u8> = (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect();
                    guest.send(&junk);
                }
                1 if step > 250 => guest.set_req_prod(rng.next_u64() as u32),
                2 if step > 250 => guest.set_rsp_cons(rng.next_u64() as u32),
                3 => {
                    guest.receive();
                }
                _ => {
                    // A mostly valid request, maybe with a lying length.
                    let payload = random_payload(&mut rng);
                    let type_ = rng.below(28) as u32;
                    let len = if rng.below(10) == 0 {
                        rng.below(XENSTORE_PAYLOAD_MAX as u64 + 2) as u32
                    } else {
                        payload.len() as u32
                    };
                    let h = XsdSockmsg {
                        type_,
                        req_id: step,
                        tx_id: rng.below(3) as u32,
                        len,
                    };
                    let mut m = h.to_bytes().to_vec();
                    m.extend_from_slice(&payload);
                    guest.send(&m);
                }
            }
            server.pump(&mut xs, guest.memory());
            if server.error().is_some() {
                assert_ne!(guest.error(), 0);
                break;
            }
        }
        assert_eq!(xs.check(), Ok(()), "seed {seed}");
    }
}
