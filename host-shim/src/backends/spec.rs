//! The command-line descriptions of disks and NICs, QEMU-like:
//! `--disk PATH[,ro][,create=SIZE][,direct][,if=xen|ide|virtio]` and
//! `--net tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,model=xen|e1000|virtio]`. The interface or model
//! says which device the guest sees (a Xen PV device, the default, or an emulated one);
//! the host side (the image file, the TAP) is the same for all of them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The device through which the guest reaches a disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskInterface {
    /// A Xen PV disk (blkback): `if=xen`.
    #[default]
    Xen,
    /// The emulated PIIX3 IDE controller's primary master: `if=ide`.
    Ide,
    /// A virtio-blk device on the modern virtio-pci transport: `if=virtio`.
    Virtio,
}

/// The device through which the guest reaches a network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetModel {
    /// A Xen PV NIC (netback): `model=xen`.
    #[default]
    Xen,
    /// The emulated Intel 82540EM: `model=e1000`.
    E1000,
    /// A virtio-net device on the modern virtio-pci transport: `model=virtio`.
    Virtio,
}

/// One `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The device the guest sees.
    pub interface: DiskInterface,
    /// The raw image file.
    pub path: PathBuf,
    /// Refuse the guest's writes (and open the file read-only).
    pub read_only: bool,
    /// Create the file with this many bytes if it does not exist (a multiple of 512).
    pub create: Option<u64>,
    /// Open with `O_DIRECT` (bypass the host page cache).
    pub direct: bool,
}

/// One `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The device the guest sees.
    pub model: NetModel,
    /// The TAP interface (created if absent).
    pub tap: String,
    /// The guest's MAC address; a locally administered one derived from the domid
    /// and device number when absent.
    pub mac: Option<[u8; 6]>,
}

/// A malformed device description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

fn err(msg: impl Into<String>) -> SpecError {
    SpecError(msg.into())
}

/// Parses a size: a number of bytes with an optional `K`, `M`, `G` (binary) suffix.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// Parses `XX:XX:XX:XX:XX:XX` (hex, case-insensitive); refuses multicast addresses,
/// which no interface may own.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    // Unicast, and not all zero (no NIC answers to that).
    (parts.next().is_none() && mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

/// Formats a MAC as xenstore's `mac` node holds it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The largest disk `create=` makes (1 TiB): a typo should not fill the host's disk.
pub const MAX_CREATE: u64 = 1 << 40;

impl FromStr for DiskSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(err(
                "--disk needs a file: --disk PATH[,ro][,create=SIZE][,direct][,if=xen|ide|virtio]",
            ));
        }
        let mut spec = DiskSpec {
            interface: DiskInterface::Xen,
            path: PathBuf::from(path),
            read_only: false,
            create: None,
            direct: false,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => spec.read_only = true,
                None if opt == "rw" => spec.read_only = false,
                None if opt == "direct" => spec.direct = true,
                Some(("if", "xen")) => spec.interface = DiskInterface::Xen,
                Some(("if", "ide")) => spec.interface = DiskInterface::Ide,
                Some(("if", "virtio")) => spec.interface = DiskInterface::Virtio,
                Some(("if", other)) => {
                    return Err(err(format!(
                        "--disk if={other}: unknown interface (expected xen, ide or virtio)"
                    )));
                }
                Some(("create", size)) => {
                    let bytes = parse_size(size)
                        .filter(|&b| b > 0 && b % 512 == 0 && b <= MAX_CREATE)
                        .ok_or_else(|| {
                            err(format!(
                                "--disk create={size}: not a size in whole 512-byte sectors \
                                 up to 1 TiB (e.g. 64M)"
                            ))
                        })?;
                    spec.create = Some(bytes);
                }
                _ => {
                    return Err(err(format!(
                        "--disk: unknown option '{opt}' (expected ro, rw, direct, create=SIZE, \
                         if=xen|ide|virtio)"
                    )));
                }
            }
        }
        if spec.read_only && spec.create.is_some() {
            return Err(err("--disk: create= makes no sense with ro"));
        }
        Ok(spec)
    }
}

/// Whether `name` can be a Linux interface name (1-15 bytes, no '/', ':' or spaces).
fn valid_ifname(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl FromStr for NetSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut tap = None;
        let mut mac = None;
        let mut model = NetModel::Xen;
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap", name)) if valid_ifname(name) => tap = Some(name.to_owned()),
                Some(("tap", name)) => {
                    return Err(err(format!(
                        "--net tap={name}: not an interface name (1-15 characters, no '/', ':' \
                         or spaces)"
                    )));
                }
                Some(("model", "xen")) => model = NetModel::Xen,
                Some(("model", "e1000")) => model = NetModel::E1000,
                Some(("model", "virtio")) => model = NetModel::Virtio,
                Some(("model", other)) => {
                    return Err(err(format!(
                        "--net model={other}: unknown model (expected xen, e1000 or virtio)"
                    )));
                }
                Some(("mac", m)) => {
                    mac = Some(parse_mac(m).ok_or_else(|| {
                        err(format!(
                            "--net mac={m}: not a unicast MAC address (XX:XX:XX:XX:XX:XX, not \
                             multicast, not all zero)"
                        ))
                    })?);
                }
                _ => {
                    return Err(err(format!(
                        "--net: unknown option '{opt}' (expected \
                         tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,model=xen|e1000|virtio])"
                    )));
                }
            }
        }
        let tap = tap.ok_or_else(|| err("--net needs tap=NAME"))?;
        Ok(NetSpec { model, tap, mac })
    }
}

impl DiskSpec {
    /// Opens (or creates) the image as the spec says; the same for every disk
    /// interface. An empty image is refused: no guest can use it.
    pub fn open(&self) -> Result<crate::hostio::disk::DiskImage, String> {
        let image = crate::hostio::disk::DiskImage::open(
            &self.path,
            crate::hostio::disk::DiskOptions {
                read_only: self.read_only,
                create_size: self.create,
                direct: self.direct,
            },
        )
        .map_err(|e| format!("disk {}: {e}", self.path.display()))?;
        if image.sectors() == 0 {
            return Err(format!(
                "disk {}: empty (use create=SIZE to make a new image)",
                self.path.display()
            ));
        }
        if image.bytes() % crate::hostio::disk::SECTOR_SIZE != 0 {
            return Err(format!(
                "disk {}: {} bytes is not a whole number of 512-byte sectors (its last {} \
                 bytes would be unreachable; truncate or extend it)",
                self.path.display(),
                image.bytes(),
                image.bytes() % crate::hostio::disk::SECTOR_SIZE
            ));
        }
        Ok(image)
    }
}

impl NetSpec {
    /// Opens (creating if absent) the TAP and brings it up; the same for every model.
    pub fn open(&self) -> Result<crate::hostio::tap::Tap, String> {
        crate::hostio::tap::Tap::open(
            &self.tap,
            crate::hostio::tap::TapOptions {
                vnet_hdr: false,
                up: true,
            },
        )
        .map_err(|e| format!("TAP {}: {e}", self.tap))
    }
}

/// The MAC a guest gets when `--net` names none: Xen's OUI `00:16:3e`, then the
/// domid and the device number, so that two guests on one host differ.
pub fn default_mac(domid: u16, devid: u32) -> [u8; 6] {
    let [hi, lo] = domid.to_be_bytes();
    [0x00, 0x16, 0x3e, hi & 0x7f, lo, devid as u8]
}

/// The xenstore device id of the `index`-th disk: Linux's `xvda`, `xvdb`, ...
/// (major 202, 16 minors per disk).
pub fn vbd_devid(index: usize) -> u32 {
    (202 << 8) | ((index as u32) << 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse_and_refuse_garbage() {
        let d: DiskSpec = "/tmp/d.img,ro".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/tmp/d.img"));
        assert!(d.read_only && !d.direct && d.create.is_none());
        let d: DiskSpec = "d.img,create=64M,direct".parse().unwrap();
        assert_eq!(d.create, Some(64 << 20));
        assert!(d.direct && !d.read_only);
        assert_eq!(d.interface, DiskInterface::Xen);
        let d: DiskSpec = "d.img,if=ide,ro".parse().unwrap();
        assert_eq!(d.interface, DiskInterface::Ide);
        assert!(d.read_only);
        for bad in [
            "d,if=",
            "d,if=virtio9",
            "d,if=IDE",
            "",
            ",ro",
            "d,create=3",
            "d,create=0",
            "d,create=2T",
            "d,wat",
            "d,ro,create=1M",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nets_parse_and_refuse_garbage() {
        let n: NetSpec = "tap=tap0,mac=00:16:3E:01:02:03".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some([0, 0x16, 0x3e, 1, 2, 3]));
        assert_eq!(format_mac(&n.mac.unwrap()), "00:16:3e:01:02:03");
        let n: NetSpec = "tap=t".parse().unwrap();
        assert_eq!(n.mac, None);
        assert_eq!(n.model, NetModel::Xen);
        let n: NetSpec = "model=e1000,tap=t".parse().unwrap();
        assert_eq!(n.model, NetModel::E1000);
        let n: NetSpec = "tap=t,model=virtio".parse().unwrap();
        assert_eq!(n.model, NetModel::Virtio);
        for bad in [
            "tap=t,model=virtio-net",
            "tap=t,model=",
            "tap=t,model=rtl8139",
            "",
            "tap=",
            "tap=a/b",
            "tap=0123456789abcdef",
            "mac=00:16:3e:01:02:03",
            "tap=t,mac=01:00:00:00:00:00",
            "tap=t,mac=00:00:00:00:00:00",
            "tap=t,mac=00:16:3e:01:02",
            "tap=t,mac=00:16:3e:01:02:03:04",
            "tap=t,vlan=3",
        ] {
            assert!(bad.parse::<NetSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_unicast_and_distinct() {
        let a = default_mac(1, 0);
        let b = default_mac(2, 0);
        assert_ne!(a, b);
        assert_eq!(a[0] & 1, 0);
        assert_eq!(vbd_devid(0), 51712);
        assert_eq!(vbd_devid(1), 51728);
    }
}
