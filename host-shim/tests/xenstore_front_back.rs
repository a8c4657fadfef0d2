//! Front against back in one process: the guest's xenstore client (`pv_drivers`)
//! against the shim's xenstored, over a real `XenstoreDomainInterface` ring in a byte
//! buffer. Notifications run the daemon synchronously, so the test is deterministic.

use std::cell::RefCell;
use std::rc::Rc;

use host_shim::xen::xenstored::{Quotas, RingServer, Xenstored};
use pv_drivers::abi::errno::XenErrno;
use pv_drivers::shmem::HeapSharedMemory;
use pv_drivers::xenstore::{TxId, WaitOutcome, XenStore, XsError, XsEvents};

const DOMID: u16 = 3;

struct Back {
    daemon: Xenstored,
    ring: RingServer,
    page: Rc<HeapSharedMemory>,
    pumps: u32,
}

impl Back {
    fn pump(&mut self) -> bool {
        self.pumps += 1;
        let r = self.ring.pump(&mut self.daemon, &*self.page);
        r.notify
    }
}

/// The client's event channel: a notify runs the daemon; a wait runs it again and
/// reports whether anything moved.
struct Events(Rc<RefCell<Back>>);

impl XsEvents for Events {
    fn notify(&mut self) {
        self.0.borrow_mut().pump();
    }
    fn wait(&mut self) -> WaitOutcome {
        if self.0.borrow_mut().pump() {
            WaitOutcome::Event
        } else {
            WaitOutcome::TimedOut
        }
    }
}

fn connect() -> (XenStore<Rc<HeapSharedMemory>, Events>, Rc<RefCell<Back>>) {
    let page = Rc::new(HeapSharedMemory::new(4096));
    let mut daemon = Xenstored::new(Quotas::default());
    daemon.introduce_domain(DOMID, "front").expect("introduce");
    let mut ring = RingServer::new(DOMID);
    ring.attach(&*page);
    let back = Rc::new(RefCell::new(Back {
        daemon,
        ring,
        page: page.clone(),
        pumps: 0,
    }));
    let store = XenStore::connect(page, Events(back.clone())).expect("connect");
    (store, back)
}

#[test]
fn identity_read_write_and_permissions() {
    let (mut xs, _back) = connect();
    assert_eq!(xs.read(TxId::NONE, "domid").unwrap(), b"3");
    assert_eq!(xs.read(TxId::NONE, "name").unwrap(), b"front");
    assert_eq!(xs.get_domain_path(DOMID).unwrap(), "/local/domain/3");
    xs.write(TxId::NONE, "data/k", b"v").unwrap();
    assert_eq!(xs.read(TxId::NONE, "/local/domain/3/data/k").unwrap(), b"v");
    assert!(
        xs.directory(TxId::NONE, "data")
            .unwrap()
            .contains(&"k".to_string())
    );
    xs.rm(TxId::NONE, "data/k").unwrap();
    assert_eq!(
        xs.read(TxId::NONE, "data/k"),
        Err(XsError::Xen(XenErrno::ENOENT))
    );
    assert_eq!(
        xs.write(TxId::NONE, "/local/domain/0/x", b"1"),
        Err(XsError::Xen(XenErrno::EACCES))
    );
    // A value near xenstored's default size quota (2048) round-trips across the ring's
    // wrap-around (the ring is 1 KiB); one over the quota is refused.
    let big: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    xs.write(TxId::NONE, "data/big", &big).unwrap();
    assert_eq!(xs.read(TxId::NONE, "data/big").unwrap(), big);
    assert_eq!(
        xs.write(TxId::NONE, "data/big", &[0; 3000]),
        Err(XsError::Xen(XenErrno::ENOSPC))
    );
}

#[test]
fn watches_fire_on_the_guests_and_on_dom0s_writes() {
    let (mut xs, back) = connect();
    xs.write(TxId::NONE, "data/vif/state", b"1").unwrap();
    xs.watch("data/vif", "tok").unwrap();
    let initial = xs.wait_watch_event(Some("tok")).unwrap();
    assert_eq!(initial.path, "data/vif");
    // A backend (domain 0) changes the guest's node: the event reaches the guest on
    // its next look at the ring.
    back.borrow_mut()
        .daemon
        .dom0()
        .write(None, "/local/domain/3/data/vif/state", b"4")
        .unwrap();
    back.borrow_mut().pump();
    let ev = xs.wait_watch_event(Some("tok")).unwrap();
    assert_eq!(ev.path, "data/vif/state");
    xs.unwatch("data/vif", "tok").unwrap();
}

#[test]
fn conflicting_transaction_gets_eagain_and_the_retry_loop_commits() {
    let (mut xs, back) = connect();
    xs.write(TxId::NONE, "data/n", b"0").unwrap();
    let tx = xs.transaction_start().unwrap();
    xs.read(tx, "data/n").unwrap();
    back.borrow_mut()
        .daemon
        .dom0()
        .write(None, "/local/domain/3/data/n", b"dom0")
        .unwrap();
    xs.write(tx, "data/n", b"guest").unwrap();
    assert_eq!(
        xs.transaction_end(tx, true),
        Err(XsError::Xen(XenErrno::EAGAIN))
    );
    assert_eq!(xs.read(TxId::NONE, "data/n").unwrap(), b"dom0");

    let mut attempts = 0;
    let r: Result<(), XsError> = xs.transaction(|tx| {
        attempts += 1;
        let v = tx.read("data/n")?;
        if attempts == 1 {
            tx.store().write(TxId::NONE, "data/n", b"meddle")?;
        }
        tx.write("data/n", &[v.as_slice(), b"+1"].concat())
    });
    r.unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(xs.read(TxId::NONE, "data/n").unwrap(), b"meddle+1");
}
