//! The client against the in-process test server: requests and replies, errors, watch
//! events interleaved with replies, stray replies, transactions that conflict, and a
//! server that is dead, slow, flooding or hostile.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::client::{Limits, TxId, XenStore};
use super::error::{ProtocolError, XsError};
use super::ring::{CONNECTION, ERROR, RSP_CONS, RSP_PROD, SERVER_FEATURES};
use super::test_server::{message, page_at, server_on, setup, setup_at};
use super::wire::{Access, Permissions, WatchEvent};
use crate::abi::errno::XenErrno;
use crate::abi::xs_wire::{
    XENSTORE_ERROR_COMM, XENSTORE_PAYLOAD_MAX, XENSTORE_RECONNECT, XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION, XsdSockmsgType,
};
use crate::shmem::SharedMemory;

const NONE: TxId = TxId::NONE;

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.to_string(),
        token: token.to_string(),
    }
}

#[test]
fn read_write_mkdir_directory_rm() {
    let (mut xs, server, _) = setup();
    xs.write(NONE, "data/greeting", b"hello").unwrap();
    assert_eq!(xs.read(NONE, "data/greeting").unwrap(), b"hello");
    assert_eq!(
        xs.read(NONE, "/local/domain/5/data/greeting").unwrap(),
        b"hello"
    );
    assert_eq!(
        server.borrow().get("/local/domain/5/data/greeting"),
        Some(b"hello".to_vec())
    );
    // Binary values travel as they are.
    xs.write(NONE, "data/bin", &[0, 1, 2, 0]).unwrap();
    assert_eq!(xs.read(NONE, "data/bin").unwrap(), [0, 1, 2, 0]);
    xs.write(NONE, "data/empty", b"").unwrap();
    assert_eq!(xs.read(NONE, "data/empty").unwrap(), b"");

    xs.mkdir(NONE, "data/dir/sub").unwrap();
    assert!(xs.exists(NONE, "data/dir").unwrap());
    let mut names = xs.directory(NONE, "data").unwrap();
    names.sort();
    assert_eq!(names, ["bin", "dir", "empty", "greeting"]);
    assert_eq!(
        xs.directory(NONE, "data/dir/sub").unwrap(),
        Vec::<String>::new()
    );

    xs.rm(NONE, "data/dir").unwrap();
    assert!(!xs.exists(NONE, "data/dir/sub").unwrap());
    // Removing something absent is fine if its parent exists...
    xs.rm(NONE, "data/dir").unwrap();
    // ...and ENOENT if not.
    assert_eq!(
        xs.rm(NONE, "data/nope/x"),
        Err(XsError::Xen(XenErrno::ENOENT))
    );
    assert_eq!(
        xs.read(NONE, "data/missing"),
        Err(XsError::Xen(XenErrno::ENOENT))
    );
    assert_eq!(xs.get_domain_path(7).unwrap(), "/local/domain/7");

    let stats = xs.stats();
    assert_eq!(stats.requests, stats.replies);
    assert_eq!(stats.error_replies, 3);
    assert_eq!(stats.stray_replies, 0);
    assert!(!xs.is_broken());
}

#[test]
fn request_ids_are_fresh_and_payloads_exact() {
    let (mut xs, server, _) = setup();
    for i in 0..5 {
        xs.write(NONE, "a", alloc::format!("{i}").as_bytes())
            .unwrap();
    }
    xs.transaction_start().unwrap();
    let log = server.borrow().log.clone();
    let ids: Vec<u32> = log.iter().map(|h| h.req_id).collect();
    assert!(ids.windows(2).all(|w| w[0] != w[1]), "{ids:?}");
    assert!(ids.iter().all(|&id| id != 0));
    let last = log.last().unwrap();
    assert_eq!(last.type_, XsdSockmsgType::TransactionStart.as_raw());
    assert_eq!(
        last.len, 1,
        "TRANSACTION_START carries an empty string and its NUL"
    );
}

#[test]
fn limits_are_enforced_before_sending() {
    let (mut xs, server, _) = setup();
    let big = vec![b'v'; XENSTORE_PAYLOAD_MAX];
    assert_eq!(xs.write(NONE, "a", &big), Err(XsError::TooLong));
    assert_eq!(xs.read(NONE, "a//b"), Err(XsError::InvalidPath));
    assert_eq!(xs.read(NONE, ""), Err(XsError::InvalidPath));
    assert_eq!(xs.read(NONE, "a/"), Err(XsError::InvalidPath));
    assert_eq!(xs.watch("a", ""), Err(XsError::InvalidArgument));
    assert_eq!(
        xs.transaction_end(NONE, true),
        Err(XsError::InvalidArgument)
    );
    assert!(server.borrow().log.is_empty(), "nothing reached the server");
    // The largest payload that fits is sent and stored.
    let fits = vec![b'v'; XENSTORE_PAYLOAD_MAX - 2];
    xs.write(NONE, "a", &fits).unwrap();
    assert_eq!(xs.read(NONE, "a").unwrap(), fits);
}

#[test]
fn big_messages_wrap_in_small_pieces() {
    for chunk in [1, 7, 1000] {
        let (mut xs, server, _) = setup_at(u32::MAX - 3);
        server.borrow_mut().faults.chunk = chunk;
        for i in 0..4u8 {
            let value: Vec<u8> = (0..3000u32).map(|j| (j as u8) ^ i).collect();
            xs.write(NONE, "blob", &value).unwrap();
            assert_eq!(xs.read(NONE, "blob").unwrap(), value, "chunk {chunk}");
        }
        assert!(!xs.is_broken());
    }
}

#[test]
fn permissions() {
    let (mut xs, _, _) = setup();
    xs.write(NONE, "shared", b"").unwrap();
    let perms = Permissions::new(5, Access::None)
        .with(0, Access::Both)
        .with(3, Access::Read);
    xs.set_perms(NONE, "shared", &perms).unwrap();
    assert_eq!(xs.get_perms(NONE, "shared").unwrap(), perms);
    assert_eq!(
        xs.get_perms(NONE, "nothing"),
        Err(XsError::Xen(XenErrno::ENOENT))
    );
}

#[test]
fn watch_events_are_queued_with_path_and_token() {
    let (mut xs, server, _) = setup();
    xs.watch("device", "dev").unwrap();
    // The watch fires once on registration.
    assert_eq!(
        xs.wait_watch_event(Some("dev")).unwrap(),
        ev("device", "dev")
    );
    assert_eq!(xs.next_watch_event(None).unwrap(), None);

    // Our own write fires it; the event arrives before the reply and is queued.
    xs.write(NONE, "device/vbd/768/state", b"1").unwrap();
    assert_eq!(
        xs.next_watch_event(None).unwrap(),
        Some(ev("device/vbd/768/state", "dev"))
    );
    // Another domain's write fires it too (relative watch: relative event path).
    server.borrow_mut().set("device/vif/0/state", b"1");
    assert_eq!(
        xs.wait_watch_event(None).unwrap(),
        ev("device/vif/0/state", "dev")
    );

    // Absolute watch: absolute event paths.
    xs.watch("/local/domain/5/data", "abs").unwrap();
    xs.write(NONE, "data/x", b"1").unwrap();
    xs.write(NONE, "device/y", b"1").unwrap();
    assert_eq!(
        xs.wait_watch_event(Some("abs")).unwrap(),
        ev("/local/domain/5/data", "abs")
    );
    assert_eq!(
        xs.wait_watch_event(Some("abs")).unwrap(),
        ev("/local/domain/5/data/x", "abs")
    );
    assert_eq!(
        xs.wait_watch_event(Some("dev")).unwrap(),
        ev("device/y", "dev")
    );
    // Without waiting, by token: the other token's event stays queued.
    xs.write(NONE, "device/w", b"1").unwrap();
    xs.write(NONE, "data/v", b"1").unwrap();
    assert_eq!(
        xs.next_watch_event(Some("abs")).unwrap(),
        Some(ev("/local/domain/5/data/v", "abs"))
    );
    assert_eq!(xs.next_watch_event(Some("abs")).unwrap(), None);
    assert_eq!(
        xs.next_watch_event(None).unwrap(),
        Some(ev("device/w", "dev"))
    );

    assert_eq!(
        xs.watch("device", "dev"),
        Err(XsError::Xen(XenErrno::EEXIST))
    );
    assert_eq!(xs.watches().count(), 2);
    xs.unwatch("device", "dev").unwrap();
    assert_eq!(server.borrow().watch_count(), 1);
    server.borrow_mut().set("device/z", b"1");
    assert_eq!(xs.next_watch_event(None).unwrap(), None);
    assert_eq!(
        xs.wait_watch_event(Some("dev")),
        Err(XsError::InvalidArgument)
    );
    assert_eq!(
        xs.unwatch("device", "dev"),
        Err(XsError::Xen(XenErrno::ENOENT))
    );
}

#[test]
fn first_event_may_overtake_the_watch_reply() {
    let (mut xs, server, _) = setup();
    server.borrow_mut().faults.event_before_reply = true;
    xs.watch("data", "t").unwrap();
    assert_eq!(xs.next_watch_event(None).unwrap(), Some(ev("data", "t")));
    assert_eq!(xs.stats().watch_events_dropped, 0);
}

#[test]
fn unknown_and_malformed_events_are_dropped() {
    let (mut xs, server, _) = setup();
    xs.watch("data", "t").unwrap();
    let _ = xs.wait_watch_event(None).unwrap();
    {
        let mut s = server.borrow_mut();
        let we = XsdSockmsgType::WatchEvent.as_raw();
        s.push(we, 0, 0, b"data\0other\0");
        s.push(we, 0, 0, b"data\0");
        s.push(we, 0, 0, b"bad path\0t\0");
        s.push(we, 0, 0, b"data/ok\0t\0");
    }
    xs.read(NONE, "/").unwrap();
    assert_eq!(xs.stats().watch_events_dropped, 3);
    assert_eq!(xs.next_watch_event(None).unwrap(), Some(ev("data/ok", "t")));
}

#[test]
fn watch_queue_is_bounded() {
    let (mut xs, server, _) = setup();
    xs.set_limits(Limits {
        watch_queue_len: 4,
        ..Limits::default()
    });
    xs.watch("data", "t").unwrap();
    for i in 0..10 {
        server.borrow_mut().set(&alloc::format!("data/{i}"), b"");
        // Identical events merge.
        server.borrow_mut().set(&alloc::format!("data/{i}"), b"");
    }
    assert!(server.borrow_mut().step());
    xs.poll().unwrap();
    assert_eq!(xs.queued_watch_events(), 4);
    let stats = xs.stats();
    assert_eq!(stats.watch_events_overflowed, 7);
    assert!(stats.watch_events_merged >= 1);
    // The newest survive.
    assert_eq!(xs.next_watch_event(None).unwrap(), Some(ev("data/6", "t")));
}

#[test]
fn stray_replies_are_dropped_and_counted() {
    let (mut xs, server, _) = setup();
    server.borrow_mut().faults.stray_replies = 3;
    xs.write(NONE, "a", b"1").unwrap();
    xs.write(NONE, "b", b"2").unwrap();
    assert_eq!(xs.read(NONE, "a").unwrap(), b"1");
    assert_eq!(xs.stats().stray_replies, 3);
}

#[test]
fn unexpected_replies_are_typed_errors() {
    let (mut xs, server, _) = setup();
    server.borrow_mut().faults.override_reply = Some(alloc::boxed::Box::new(|h, payload| {
        let err = XsdSockmsgType::Error.as_raw();
        match payload {
            b"unknown-error\0" => Some(message(err, h.req_id, h.tx_id, b"EWHATEVER\0")),
            b"wrong-type\0" => Some(message(
                XsdSockmsgType::Write.as_raw(),
                h.req_id,
                h.tx_id,
                b"OK\0",
            )),
            b"bad-dir\0" => Some(message(h.type_, h.req_id, h.tx_id, b"a\0\0b\0")),
            b"bad-perms\0" => Some(message(h.type_, h.req_id, h.tx_id, b"q1\0")),
            b"\0" if h.type_ == XsdSockmsgType::TransactionStart.as_raw() => {
                Some(message(h.type_, h.req_id, h.tx_id, b"0\0"))
            }
            b"3\0" => Some(message(h.type_, h.req_id, h.tx_id, b"relative\0")),
            _ => None,
        }
    }));
    let malformed = XsError::Protocol(ProtocolError::MalformedReply);
    assert_eq!(
        xs.read(NONE, "unknown-error"),
        Err(XsError::Protocol(ProtocolError::UnknownErrorName))
    );
    assert_eq!(
        xs.read(NONE, "wrong-type"),
        Err(XsError::Protocol(ProtocolError::UnexpectedReply {
            sent: XsdSockmsgType::Read.as_raw(),
            got: XsdSockmsgType::Write.as_raw()
        }))
    );
    assert_eq!(xs.directory(NONE, "bad-dir"), Err(malformed));
    assert_eq!(xs.get_perms(NONE, "bad-perms"), Err(malformed));
    assert_eq!(xs.transaction_start(), Err(malformed));
    assert_eq!(xs.get_domain_path(3), Err(malformed));
    // None of these breaks the stream.
    assert!(!xs.is_broken());
    xs.write(NONE, "fine", b"1").unwrap();
}

#[test]
fn transaction_retries_on_eagain_at_commit() {
    let (mut xs, server, _) = setup();
    xs.write(NONE, "counter", b"41").unwrap();
    server.borrow_mut().faults.fail_commits = 2;
    let mut runs = 0;
    let v = xs
        .transaction(|tx| {
            runs += 1;
            let v: u32 = String::from_utf8(tx.read("counter")?)
                .unwrap()
                .parse()
                .unwrap();
            tx.write("counter", (v + 1).to_string().as_bytes())?;
            Ok::<_, XsError>(v + 1)
        })
        .unwrap();
    assert_eq!(v, 42);
    assert_eq!(runs, 3);
    assert_eq!(xs.read(NONE, "counter").unwrap(), b"42");
    assert_eq!(xs.stats().transaction_retries, 2);
    assert_eq!(server.borrow().open_transactions(), 0);
}

#[test]
fn transaction_sees_a_conflicting_writer() {
    let (mut xs, server, _) = setup();
    let mut runs = 0;
    xs.transaction(|tx| {
        runs += 1;
        let _ = tx.exists("x")?;
        if runs == 1 {
            // Another domain writes meanwhile: our commit must fail once.
            server.borrow_mut().set("other", b"1");
        }
        tx.write("x", b"mine")
    })
    .unwrap();
    assert_eq!(runs, 2);
    assert_eq!(xs.read(NONE, "x").unwrap(), b"mine");
}

#[test]
fn transaction_gives_up_and_aborts() {
    let (mut xs, server, _) = setup();
    xs.set_limits(Limits {
        transaction_attempts: 3,
        ..Limits::default()
    });
    server.borrow_mut().faults.fail_commits = 100;
    let r = xs.transaction(|tx| tx.write("x", b"1"));
    assert_eq!(r, Err(XsError::Xen(XenErrno::EAGAIN)));
    assert_eq!(server.borrow().open_transactions(), 0);
    assert_eq!(server.borrow().get("x"), None);

    // A body error aborts the transaction and comes back unchanged.
    server.borrow_mut().faults.fail_commits = 0;
    let r: Result<(), XsError> = xs.transaction(|tx| {
        tx.write("x", b"1")?;
        tx.read("missing").map(drop)
    });
    assert_eq!(r, Err(XsError::Xen(XenErrno::ENOENT)));
    assert_eq!(server.borrow().open_transactions(), 0);
    assert_eq!(server.borrow().get("x"), None, "aborted, not committed");

    // Operations in a transaction that the server does not know fail.
    assert_eq!(
        xs.read(TxId::from_raw(999), "x"),
        Err(XsError::Xen(XenErrno::ENOENT))
    );
}

#[test]
fn dead_server_times_out_then_late_reply_is_dropped() {
    let (mut xs, server, _) = setup();
    xs.write(NONE, "k", b"v").unwrap();
    server.borrow_mut().faults.dead = true;
    assert_eq!(xs.read(NONE, "k"), Err(XsError::Timeout));
    assert_eq!(xs.stats().timeouts, 1);
    // The request was whole in the ring: the connection is still usable.
    assert!(!xs.is_broken());
    server.borrow_mut().faults.dead = false;
    // The server now answers the old read, then this one; the old reply is a stray.
    xs.write(NONE, "k", b"w").unwrap();
    assert_eq!(xs.read(NONE, "k").unwrap(), b"w");
    assert_eq!(xs.stats().stray_replies, 1);
}

#[test]
fn dead_server_with_half_a_request_breaks_the_connection() {
    let (mut xs, server, _) = setup();
    server.borrow_mut().faults.dead = true;
    assert_eq!(xs.write(NONE, "k", &[b'x'; 3000]), Err(XsError::Timeout));
    assert!(xs.is_broken());
    assert_eq!(xs.read(NONE, "k"), Err(XsError::Broken));
    assert_eq!(xs.poll(), Err(XsError::Broken));
}

#[test]
fn wake_ups_without_progress_are_bounded() {
    let (mut xs, server, _) = setup();
    xs.events_mut().always_event = true;
    server.borrow_mut().faults.dead = true;
    assert_eq!(xs.read(NONE, "k"), Err(XsError::Timeout));
    assert_eq!(
        xs.stats().waits,
        u64::from(Limits::default().max_spurious_wakeups) + 1
    );
}

#[test]
fn a_flood_of_messages_is_bounded() {
    let (mut xs, _server, _) = setup();
    xs.set_limits(Limits {
        max_messages_per_call: 50,
        ..Limits::default()
    });
    xs.watch("data", "t").unwrap();
    assert_eq!(xs.wait_watch_event(Some("t")).unwrap(), ev("data", "t"));
    // From now on every server step is preceded by a hundred strays: more than the
    // ring holds, so every reply and event sits behind a growing backlog.
    xs.events_mut().flood = 100;
    assert_eq!(xs.read(NONE, "/"), Err(XsError::Timeout));
    assert!(xs.stats().stray_replies >= 50);
    let before = xs.stats().stray_replies;
    assert_eq!(xs.wait_watch_event(Some("t")), Err(XsError::Timeout));
    assert!(xs.stats().stray_replies - before >= 50);
    assert!(!xs.is_broken());
}

#[test]
fn waiting_for_an_event_that_never_comes_times_out() {
    let (mut xs, _server, _) = setup();
    xs.watch("data", "t").unwrap();
    assert_eq!(xs.wait_watch_event(None).unwrap(), ev("data", "t"));
    assert_eq!(xs.wait_watch_event(Some("t")), Err(XsError::Timeout));
    assert!(!xs.is_broken());
}

#[test]
fn hostile_response_index_is_a_protocol_error() {
    let (mut xs, server, page) = setup();
    server.borrow_mut().faults.dead = true;
    let cons = page.load_u32(RSP_CONS, Ordering::Relaxed);
    page.store_u32(RSP_PROD, cons.wrapping_add(5000), Ordering::Release);
    assert!(matches!(
        xs.read(NONE, "k"),
        Err(XsError::Protocol(ProtocolError::RingIndices { .. }))
    ));
    assert!(xs.is_broken());
    assert_eq!(xs.read(NONE, "k"), Err(XsError::Broken));
    assert_eq!(xs.reconnect(), Err(XsError::ReconnectUnsupported));
}

#[test]
fn oversized_header_is_a_protocol_error() {
    let (mut xs, server, _) = setup();
    server.borrow_mut().faults.override_reply = Some(alloc::boxed::Box::new(|h, _| {
        let mut m = message(h.type_, h.req_id, h.tx_id, &[]);
        m[12..16].copy_from_slice(&(XENSTORE_PAYLOAD_MAX as u32 + 1).to_le_bytes());
        m.extend([b'x'; 100]);
        Some(m)
    }));
    assert_eq!(
        xs.read(NONE, "k"),
        Err(XsError::Protocol(ProtocolError::PayloadTooLong(4097)))
    );
    assert!(xs.is_broken());
}

#[test]
fn server_error_field_stops_the_wait() {
    let (mut xs, server, page) = setup();
    server.borrow_mut().faults.dead = true;
    page.store_u32(
        SERVER_FEATURES,
        XENSTORE_SERVER_FEATURE_ERROR,
        Ordering::Release,
    );
    page.store_u32(ERROR, XENSTORE_ERROR_COMM, Ordering::Release);
    assert_eq!(
        xs.read(NONE, "k"),
        Err(XsError::ServerError(XENSTORE_ERROR_COMM))
    );
    assert_eq!(xs.stats().waits, 0, "no wait once the server has given up");
    assert!(xs.is_broken());
}

#[test]
fn reconnect_resets_the_ring_and_restores_watches() {
    let (mut xs, server, page) = setup();
    server.borrow_mut().enable_reconnect();
    xs.watch("data", "t").unwrap();
    assert_eq!(xs.wait_watch_event(None).unwrap(), ev("data", "t"));
    // A transient hostile index breaks the connection...
    let cons = page.load_u32(RSP_CONS, Ordering::Relaxed);
    let prod = page.load_u32(RSP_PROD, Ordering::Relaxed);
    page.store_u32(RSP_PROD, cons.wrapping_add(4000), Ordering::Release);
    assert!(xs.read(NONE, "k").is_err());
    assert!(xs.is_broken());
    page.store_u32(RSP_PROD, prod, Ordering::Release);
    // ...and reconnection repairs it.
    xs.reconnect().unwrap();
    assert!(!xs.is_broken());
    assert_eq!(xs.stats().reconnects, 1);
    assert_eq!(server.borrow().watch_count(), 1, "watch registered again");
    assert_eq!(xs.wait_watch_event(None).unwrap(), ev("data", "t"));
    xs.write(NONE, "data/x", b"1").unwrap();
    assert_eq!(xs.read(NONE, "data/x").unwrap(), b"1");
    assert_eq!(xs.wait_watch_event(None).unwrap(), ev("data/x", "t"));
}

#[test]
fn connect_waits_out_a_reconnection_bounded() {
    let page = page_at(0);
    let (server, events) = server_on(&page);
    page.store_u32(
        SERVER_FEATURES,
        XENSTORE_SERVER_FEATURE_RECONNECTION,
        Ordering::Release,
    );
    page.store_u32(CONNECTION, XENSTORE_RECONNECT, Ordering::Release);
    server.borrow_mut().faults.dead = true;
    assert_eq!(
        XenStore::connect(page.clone(), events).err(),
        Some(XsError::Timeout)
    );
    // A live server finishes the reconnection and the client connects.
    server.borrow_mut().faults.dead = false;
    let (_, events) = server_on(&page);
    let mut xs = XenStore::connect(page.clone(), events).unwrap();
    xs.write(NONE, "a", b"1").unwrap();
}

#[test]
fn connect_discards_stale_responses_and_checks_the_page() {
    let page = page_at(7);
    let (server, events) = server_on(&page);
    server
        .borrow_mut()
        .push(XsdSockmsgType::Read.as_raw(), 1, 0, b"stale");
    server.borrow_mut().step();
    let mut xs = XenStore::connect(page.clone(), events).unwrap();
    assert_eq!(xs.stats().discarded_bytes, 21);
    xs.write(NONE, "a", b"1").unwrap();
    assert_eq!(xs.read(NONE, "a").unwrap(), b"1");
    assert_eq!(xs.stats().stray_replies, 0);

    let small = alloc::rc::Rc::new(crate::shmem::HeapSharedMemory::new(1024));
    let (_, events) = server_on(&page);
    assert_eq!(
        XenStore::connect(small, events).err(),
        Some(XsError::PageTooSmall)
    );
    let bad = page_at(0);
    bad.store_u32(RSP_PROD, 3000, Ordering::Relaxed);
    let (_, events) = server_on(&bad);
    assert!(matches!(
        XenStore::connect(bad.clone(), events).err(),
        Some(XsError::Protocol(ProtocolError::RingIndices { .. }))
    ));
}

/// The server on its own thread, woken by the client's notifications and waking the
/// client in turn, with real timeouts: the way a shim xenstored would be driven.
#[test]
fn threaded_server() {
    extern crate std;
    use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::client::{WaitOutcome, XsEvents};
    use super::test_server::TestServer;
    use crate::shmem::HeapSharedMemory;

    struct ChannelEvents {
        kick: Sender<()>,
        wake: Receiver<()>,
    }
    impl XsEvents for ChannelEvents {
        fn notify(&mut self) {
            let _ = self.kick.send(());
        }
        fn wait(&mut self) -> WaitOutcome {
            match self.wake.recv_timeout(Duration::from_millis(200)) {
                Ok(()) => {
                    while self.wake.try_recv().is_ok() {}
                    WaitOutcome::Event
                }
                Err(_) => WaitOutcome::TimedOut,
            }
        }
    }

    let page = Arc::new(HeapSharedMemory::new(4096));
    let server = Arc::new(Mutex::new(TestServer::new(page.clone(), 9)));
    server.lock().unwrap().faults.chunk = 100;
    let (kick, kicked) = channel::<()>();
    let (woke, wake) = channel::<()>();
    let thread = {
        let server = server.clone();
        std::thread::spawn(move || {
            loop {
                match kicked.recv_timeout(Duration::from_millis(5)) {
                    Err(RecvTimeoutError::Disconnected) => break,
                    _ => {
                        while server.lock().unwrap().step() {
                            let _ = woke.send(());
                        }
                    }
                }
            }
        })
    };

    // Generous: a loaded test machine may stall the server thread for a while.
    let limits = Limits {
        max_idle_waits: 50,
        ..Limits::default()
    };
    let mut xs =
        XenStore::connect_with(page.clone(), ChannelEvents { kick, wake }, limits).unwrap();
    xs.watch("device", "dev").unwrap();
    assert_eq!(
        xs.wait_watch_event(Some("dev")).unwrap(),
        ev("device", "dev")
    );
    for i in 0..20u32 {
        let value = alloc::format!("{i}-{}", "x".repeat(i as usize * 37));
        xs.write(NONE, &alloc::format!("device/vbd/{i}"), value.as_bytes())
            .unwrap();
        assert_eq!(
            xs.read(NONE, &alloc::format!("device/vbd/{i}")).unwrap(),
            value.as_bytes()
        );
        assert_eq!(
            xs.wait_watch_event(Some("dev")).unwrap(),
            ev(&alloc::format!("device/vbd/{i}"), "dev")
        );
    }
    server.lock().unwrap().set("device/vbd/0", b"backend");
    assert_eq!(
        xs.wait_watch_event(Some("dev")).unwrap(),
        ev("device/vbd/0", "dev")
    );
    let n = xs
        .transaction(|tx| Ok::<_, XsError>(tx.directory("device/vbd")?.len()))
        .unwrap();
    assert_eq!(n, 20);
    assert_eq!(xs.stats().stray_replies, 0);
    drop(xs);
    thread.join().unwrap();
}

#[test]
fn unwatch_of_a_watch_the_server_lost_succeeds_and_of_an_unknown_one_fails() {
    let (mut xs, server, _) = setup();
    xs.watch("data", "t").unwrap();
    server.borrow_mut().forget_watches();
    // Ours, but the server has none (QEMU's xenstore does this): gone either way.
    assert_eq!(xs.unwatch("data", "t"), Ok(()));
    assert_eq!(xs.watches().count(), 0);
    // Never ours: the server's ENOENT stands.
    assert_eq!(xs.unwatch("data", "t"), Err(XsError::Xen(XenErrno::ENOENT)));
}

#[test]
fn resync_after_raw_messages_through_the_same_page() {
    use super::ring::XsRing;
    use crate::abi::xs_wire::XsdSockmsgType as T;
    let (mut xs, server, page) = setup();
    xs.write(NONE, "k", b"v").unwrap();
    // Someone else speaks raw wire messages through the page while the client idles.
    let mut raw = XsRing::attach(page.clone()).unwrap();
    let msg = message(T::Read.as_raw(), 77, 0, b"k\0");
    assert_eq!(raw.write(&msg).unwrap(), msg.len());
    server.borrow_mut().step();
    let mut reply = [0u8; 64];
    let n = raw.read(&mut reply).unwrap();
    assert!(n > 16 && reply[n - 1] == b'v', "{:?}", &reply[..n]);
    // The client's private indices are stale until it takes them from the page again.
    xs.resync().unwrap();
    assert_eq!(xs.read(NONE, "k").unwrap(), b"v");
    xs.write(NONE, "k", b"w").unwrap();
    assert_eq!(xs.read(NONE, "k").unwrap(), b"w");
}
