//! The PV console backend (Xen's xenconsoled for one guest): what the guest writes to
//! its console ring (`HVM_PARAM_CONSOLE_PFN`) appears on the shim's console sink.
//!
//! It runs when the guest signals the console channel, on the signalling thread; the
//! ring protocol (and its checks of the guest's indices) is `pv_drivers::console`.

use std::io::Write as _;
use std::sync::{Arc, Mutex, Weak};

use pv_drivers::console::ConsoleBack;

use super::Xen;
use super::guest_mem::SharedPage;
use crate::devices::console::ConsoleSink;

/// The backend state.
pub struct ConsoleBackend {
    ring: ConsoleBack<SharedPage>,
    sink: ConsoleSink,
    /// Bytes printed.
    pub bytes: u64,
    /// Times the guest's indices were garbage.
    pub errors: u64,
}

impl ConsoleBackend {
    /// Drains the ring to the sink; returns whether anything was consumed.
    pub fn service(&mut self) -> bool {
        let sink = &mut self.sink;
        let mut print = |bytes: &[u8]| {
            // A closed host console loses the output, never the guest.
            let _ = sink.write_all(bytes);
        };
        match self.ring.drain_output(&mut print) {
            Ok(n) => {
                self.bytes += n as u64;
                n > 0
            }
            Err(_) => {
                self.errors += 1;
                true
            }
        }
    }
}

impl Xen {
    /// Serves the guest's PV console ring to `sink`. Call once, before the guest runs.
    pub fn attach_console(self: &Arc<Self>, sink: ConsoleSink) -> Result<(), String> {
        let page = self
            .ram
            .page(self.special.console_pfn)
            .map_err(|e| format!("console page: {e}"))?;
        let ring = ConsoleBack::new(page).map_err(|e| format!("console ring: {e}"))?;
        ring.set_connected(true);
        let backend = Arc::new(Mutex::new(ConsoleBackend {
            ring,
            sink,
            bytes: 0,
            errors: 0,
        }));
        let weak: Weak<Xen> = Arc::downgrade(self);
        let dom0_port = self.special.console_dom0_port;
        let notify = Arc::new(move || {
            let consumed = backend.lock().unwrap_or_else(|p| p.into_inner()).service();
            if consumed && let Some(xen) = weak.upgrade() {
                xen.notify_guest(dom0_port);
            }
        });
        if self.set_dom0_notifier(dom0_port, notify) {
            Ok(())
        } else {
            Err("console event channel is not open".into())
        }
    }
}
