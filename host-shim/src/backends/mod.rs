//! PV backends: blkback on a disk image, netback on a TAP device.
//!
//! A backend is written against [`BackendEnv`], domain 0's view of one frontend
//! domain: grant mappings and grant copies (the only way a backend reaches guest
//! memory), interdomain event channels, and xenstored as domain 0. [`ShimEnv`]
//! implements it over the shim's [`Xen`]; host tests implement it over byte-buffer
//! memory, so a frontend and a backend run against each other in one process.
//!
//! Each backend runs on its own thread ([`spawn`]), woken by a [`Kick`] when the guest
//! signals its event channel or when a xenstore node it watches changes. A backend
//! never trusts the frontend: every ring index, grant reference, length and xenstore
//! value it reads is checked, and a bad one gets an error response or moves the
//! device to `Closed`; the backend thread itself never panics on guest input.

pub mod blkback;
pub mod loopback;
pub mod netback;
mod shim_env;
pub mod spec;
pub use shim_env::ShimEnv;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::xen::xenstored::XsError;
use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::grant_table::GrantRef;
use pv_drivers::abi::xen::DomId;
use pv_drivers::shmem::SharedMemory;
use pv_drivers::xenbus::XenbusState;

use crate::xen::evtchn::Notifier;
use crate::xen::xenstored::{Access, Perms, Xenstored};

/// Domain 0's view of one frontend domain.
pub trait BackendEnv: Send + Sync + 'static {
    /// A pinned mapping of granted frames, contiguous, `4096 * n` bytes.
    type Mapping: SharedMemory + Send + Sync + 'static;

    /// The frontend's domain id.
    fn frontend_domid(&self) -> DomId;

    /// Maps the frames granted to domain 0 in `grefs`, in order, as one view
    /// (`GNTTABOP_map_grant_ref`): writable only if `write`. The grants stay pinned
    /// until the mapping is dropped. Errors are `GNTST_*` values.
    fn map_grants(&self, grefs: &[GrantRef], write: bool) -> Result<Self::Mapping, i16>;

    /// Copies `buf.len()` bytes from offset `offset` of the frame granted in `gref`
    /// (`GNTTABOP_copy` from the guest). `offset + len` must not pass the page end.
    fn copy_from_grant(&self, gref: GrantRef, offset: u16, buf: &mut [u8]) -> Result<(), i16>;

    /// Copies `data` to offset `offset` of the frame granted writable in `gref`.
    fn copy_to_grant(&self, gref: GrantRef, offset: u16, data: &[u8]) -> Result<(), i16>;

    /// Binds to the frontend's unbound port `remote_port`
    /// (`EVTCHNOP_bind_interdomain`); `kick` runs whenever the frontend signals it.
    /// Returns domain 0's local port.
    fn bind(&self, remote_port: u32, kick: Notifier) -> Result<u32, XenErrno>;

    /// Signals the frontend through local port `port` (`EVTCHNOP_send`).
    fn notify(&self, port: u32);

    /// Closes local port `port`.
    fn unbind(&self, port: u32);

    /// Runs `f` on xenstored as domain 0, then lets the frontend see the changes
    /// (replies and watch events it caused).
    fn with_store<R>(&self, f: impl FnOnce(&mut Xenstored) -> R) -> R;

    /// Watches `path` as domain 0; `kick` runs when it (or a node below) changes, and
    /// once at the start.
    fn watch(&self, path: &str, kick: Notifier) -> Result<(), XsError>;
}

/// A wake-up for a backend thread: a set of reasons, and a condition variable.
#[derive(Default)]
pub struct Kick {
    bits: Mutex<u32>,
    cv: Condvar,
    stop: AtomicBool,
}

impl Kick {
    /// The frontend signalled the event channel.
    pub const EVENT: u32 = 1;
    /// A watched xenstore node changed.
    pub const XENBUS: u32 = 2;

    /// A new kick with no reason pending.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records `reason` and wakes the thread.
    pub fn raise(&self, reason: u32) {
        *self.bits.lock().unwrap_or_else(|p| p.into_inner()) |= reason;
        self.cv.notify_all();
    }

    /// A notifier that raises `reason` on this kick.
    pub fn notifier(self: &Arc<Self>, reason: u32) -> Notifier {
        let me = self.clone();
        Arc::new(move || me.raise(reason))
    }

    /// Takes the pending reasons without waiting (0 if none).
    pub fn take(&self) -> u32 {
        std::mem::take(&mut *self.bits.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until a reason is pending or [`Kick::stop`] was called, and takes the
    /// reasons (0 when stopping).
    pub fn wait(&self) -> u32 {
        let mut bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        while *bits == 0 && !self.stop.load(Ordering::Acquire) {
            bits = self.cv.wait(bits).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::take(&mut *bits)
    }

    /// Asks the thread to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _guard = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        self.cv.notify_all();
    }

    /// Whether [`Kick::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A PV backend: one device of one frontend.
pub trait Backend: Send + 'static {
    /// `"vbd 768"`, `"vif 0"`: for logs.
    fn name(&self) -> String;

    /// Handles the reasons in `kick` (a set of [`Kick::EVENT`] and [`Kick::XENBUS`]
    /// bits): follows the frontend's xenbus state, serves the rings.
    fn run_once(&mut self, reasons: u32);

    /// Counters, as JSON for `--stats`.
    fn stats(&self) -> serde_json::Value;

    /// The frontend is gone or the shim is stopping: drop mappings and ports.
    fn shutdown(&mut self);
}

/// A backend's counters as its thread last published them (whenever it goes idle),
/// for snapshots taken while it runs.
pub type LiveStats = Arc<Mutex<serde_json::Value>>;

/// A backend running on its own thread.
pub struct Running {
    kick: Arc<Kick>,
    thread: Option<JoinHandle<serde_json::Value>>,
    name: String,
    live: LiveStats,
}

/// Starts `backend` on a thread named after it. `kick` must be the one its notifiers
/// raise. The thread handles one round at once (so the backend writes its xenstore
/// nodes before the guest starts looking), then one per wake-up.
pub fn spawn<B: Backend>(mut backend: B, kick: Arc<Kick>) -> std::io::Result<Running> {
    let name = backend.name();
    let k = kick.clone();
    let live: LiveStats = Arc::new(Mutex::new(serde_json::Value::Null));
    let published = live.clone();
    let thread = std::thread::Builder::new()
        .name(format!("back-{name}"))
        .spawn(move || {
            let publish = |b: &B| {
                let stats = b.stats();
                *published.lock().unwrap_or_else(|p| p.into_inner()) = stats;
            };
            backend.run_once(Kick::XENBUS);
            loop {
                // Publish the counters when there is nothing more to do, before the
                // thread sleeps: not after every round under load (building them costs
                // host CPU, which the benchmark measures), yet a snapshot taken between
                // bursts sees every round that ran.
                let mut reasons = k.take();
                if reasons == 0 {
                    publish(&backend);
                    reasons = k.wait();
                }
                if k.stopping() {
                    break;
                }
                backend.run_once(reasons);
            }
            backend.shutdown();
            backend.stats()
        })?;
    Ok(Running {
        kick,
        thread: Some(thread),
        name,
        live,
    })
}

impl Running {
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counters as the thread last published them (live, for snapshots).
    pub fn live_stats(&self) -> LiveStats {
        self.live.clone()
    }

    /// Stops the thread and returns the backend's counters.
    pub fn stop(mut self) -> serde_json::Value {
        self.kick.stop();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(stats)) => stats,
            _ => serde_json::json!({ "error": "backend thread panicked" }),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kick.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The xenstore paths of one device, in the layout Xen's toolstack (libxl) writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePaths {
    /// `/local/domain/<domid>/device/<kind>/<devid>`.
    pub frontend: String,
    /// `/local/domain/0/backend/<kind>/<domid>/<devid>`.
    pub backend: String,
}

impl DevicePaths {
    /// The paths of device `devid` of type `kind` (`vbd`, `vif`) of domain `domid`.
    pub fn new(kind: &str, domid: DomId, devid: u32) -> Self {
        Self {
            frontend: format!("/local/domain/{domid}/device/{kind}/{devid}"),
            backend: format!("/local/domain/0/backend/{kind}/{domid}/{devid}"),
        }
    }

    /// A node under the frontend directory.
    pub fn front(&self, name: &str) -> String {
        format!("{}/{name}", self.frontend)
    }

    /// A node under the backend directory.
    pub fn back(&self, name: &str) -> String {
        format!("{}/{name}", self.backend)
    }
}

/// Creates a device's xenstore directories as libxl does before the guest starts:
/// the frontend directory owned by the guest and readable by domain 0, holding
/// `backend`, `backend-id`, `state` = Initialising and `front`'s extra nodes; the
/// backend directory owned by domain 0 and readable by the guest, holding
/// `frontend`, `frontend-id`, `online`, `state` = Initialising and `back`'s nodes.
pub fn create_device(
    xs: &mut Xenstored,
    domid: DomId,
    paths: &DevicePaths,
    front: &[(&str, String)],
    back: &[(&str, String)],
) -> Result<(), XsError> {
    let mut d = xs.dom0();
    let initialising = (XenbusState::Initialising as u32).to_string();
    // Backend first, so that a frontend that finds its directory also finds this.
    d.mkdir(None, &paths.backend)?;
    d.set_perms(
        None,
        &paths.backend,
        &Perms::new(0, Access::None).grant(domid, Access::Read),
    )?;
    let mut nodes: Vec<(&str, String)> = vec![
        ("frontend", paths.frontend.clone()),
        ("frontend-id", domid.to_string()),
        ("online", "1".into()),
        ("state", initialising.clone()),
    ];
    nodes.extend(back.iter().cloned());
    for (k, v) in &nodes {
        d.write(None, &paths.back(k), v.as_bytes())?;
    }
    d.mkdir(None, &paths.frontend)?;
    d.set_perms(
        None,
        &paths.frontend,
        &Perms::new(domid, Access::None).grant(0, Access::Read),
    )?;
    let mut nodes: Vec<(&str, String)> = vec![
        ("backend", paths.backend.clone()),
        ("backend-id", "0".into()),
        ("state", initialising),
    ];
    nodes.extend(front.iter().cloned());
    for (k, v) in &nodes {
        d.write(None, &paths.front(k), v.as_bytes())?;
    }
    Ok(())
}

/// Reads a xenbus state node; a missing or malformed one reads as `Unknown`.
pub fn read_state(xs: &mut Xenstored, path: &str) -> XenbusState {
    xs.dom0()
        .read(None, path)
        .ok()
        .and_then(|v| XenbusState::parse(&v).ok())
        .unwrap_or(XenbusState::Unknown)
}

/// Writes a xenbus state node.
pub fn write_state(xs: &mut Xenstored, path: &str, state: XenbusState) -> Result<(), XsError> {
    xs.dom0()
        .write(None, path, (state as u32).to_string().as_bytes())
}

/// Creates the PV devices the command line asked for (backing file or TAP opened,
/// device nodes in xenstore) and starts their backends, before the guest runs. Disks
/// become `vbd` 51712, 51728, ... (the guest's xvda, xvdb, ...), networks `vif` 0, 1, ...
pub fn start(
    xen: &Arc<crate::xen::Xen>,
    disks: &[spec::DiskSpec],
    nets: &[spec::NetSpec],
) -> Result<Vec<Running>, String> {
    let mut running = Vec::new();
    if disks.is_empty() && nets.is_empty() {
        return Ok(running);
    }
    let env = ShimEnv::new(xen.clone())?;
    for (i, d) in disks.iter().enumerate() {
        let image = d.open()?;
        let kick = Kick::new();
        let devid = spec::vbd_devid(i);
        let back = blkback::Blkback::new(
            env.clone(),
            kick.clone(),
            devid,
            image,
            blkback::BlkbackOptions::default(),
        )
        .map_err(|e| format!("disk {}: {e}", d.path.display()))?;
        running.push(spawn(back, kick).map_err(|e| format!("blkback thread: {e}"))?);
    }
    for (i, n) in nets.iter().enumerate() {
        let devid = i as u32;
        let tap = n.open()?;
        let mac = n
            .mac
            .unwrap_or_else(|| spec::default_mac(xen.domid(), devid));
        let kick = Kick::new();
        let mut back = netback::Netback::new(
            env.clone(),
            tap,
            kick.clone(),
            netback::NetbackConfig::new(devid, mac),
        );
        // Device nodes are written now, before the guest can look for them.
        back.run_once(Kick::XENBUS);
        running.push(spawn(back, kick).map_err(|e| format!("netback thread: {e}"))?);
    }
    Ok(running)
}
