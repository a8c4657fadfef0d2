//! Path syntax, as `canonicalize()` in C xenstored's `tools/xenstored/core.c` checks it
//! and `docs/misc/xenstore.txt` ("Paths are /-separated...") describes it.
//!
//! - Allowed bytes: ASCII letters and digits and `-/_@`. Anything else is `EINVAL`.
//! - A path starting with `/` is absolute; one starting with `@` is a special watch path
//!   (`@introduceDomain`, `@releaseDomain`, ...) and is accepted only where the
//!   operation allows it; anything else is relative to `/local/domain/<domid>`
//!   (so the empty path becomes `/local/domain/<domid>/` and is refused).
//! - No trailing slash (except `/` itself), no `//`.
//! - At most [`XENSTORE_ABS_PATH_MAX`] bytes in all, and for unprivileged callers at most
//!   the `path-max` quota below any `/local/domain/<n>/` prefix (C xenstored measures
//!   the quota the same way: `strlen(name) - local_off`).

use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::xs_wire::XENSTORE_ABS_PATH_MAX;

/// The prefix of every domain's home directory.
pub(super) const LOCAL_DOMAIN: &str = "/local/domain/";

/// `/local/domain/<domid>`: a domain's home, the base of its relative paths.
pub(super) fn domain_path(domid: u16) -> String {
    format!("{LOCAL_DOMAIN}{domid}")
}

/// A checked path in its absolute (or special `@...`) form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Canonical {
    /// The absolute path, or the special path as given.
    pub path: String,
    /// The caller gave it relative to its home (watch events are then reported
    /// relative too).
    pub relative: bool,
}

fn valid_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Checks `raw` as sent by `domid` and makes it absolute.
///
/// `rel_max` is the `path-max` quota for the caller (`None` for dom0 or when disabled).
pub(super) fn canonicalize(
    raw: &[u8],
    domid: u16,
    allow_special: bool,
    rel_max: Option<usize>,
) -> Result<Canonical, XenErrno> {
    if !raw.iter().copied().all(valid_byte) {
        return Err(XenErrno::EINVAL);
    }
    let special = raw.first() == Some(&b'@');
    if special && !allow_special {
        return Err(XenErrno::EINVAL);
    }
    // Every byte is ASCII (checked above), so this cannot fail.
    let text = core::str::from_utf8(raw).map_err(|_| XenErrno::EINVAL)?;
    let relative = !special && !text.starts_with('/');
    let path = if relative {
        format!("{}/{text}", domain_path(domid))
    } else {
        text.to_owned()
    };
    if (path.len() > 1 && path.ends_with('/')) || path.contains("//") {
        return Err(XenErrno::EINVAL);
    }
    if path.len() > XENSTORE_ABS_PATH_MAX {
        return Err(XenErrno::EINVAL);
    }
    if let Some(max) = rel_max
        && path.len() - local_offset(&path) > max
    {
        return Err(XenErrno::EINVAL);
    }
    Ok(Canonical { path, relative })
}

/// Length of a leading `/local/domain/<1..5 digits>/`, else 0 (C xenstored's
/// `sscanf(name, "/local/domain/%5u/%n")`).
pub(super) fn local_offset(path: &str) -> usize {
    let Some(rest) = path.strip_prefix(LOCAL_DOMAIN) else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=5).contains(&digits) && rest.as_bytes().get(digits) == Some(&b'/') {
        LOCAL_DOMAIN.len() + digits + 1
    } else {
        0
    }
}

/// The parent of `path`: everything before the last `/` (after the first byte); `/` for
/// top-level nodes, for `/` itself and for special paths without a `/` (as C
/// xenstored's `get_parent()`).
pub(super) fn parent(path: &str) -> &str {
    match path.get(1..).and_then(|rest| rest.rfind('/')) {
        Some(i) => &path[..i + 1],
        None => "/",
    }
}

/// The last component of `path`.
pub(super) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `parent/name`, with no double slash under the root.
pub(super) fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `child_path(parent, name)`, without building it.
pub(super) fn is_child_path(path: &str, parent: &str, name: &str) -> bool {
    let rest = if parent == "/" {
        path.strip_prefix('/')
    } else {
        path.strip_prefix(parent).and_then(|r| r.strip_prefix('/'))
    };
    rest == Some(name)
}

/// Writes `child_path(parent, name)` into `out` (replacing its contents), so that a
/// loop over many children reuses one buffer.
pub(super) fn child_path_into(out: &mut String, parent: &str, name: &str) {
    out.clear();
    out.push_str(parent);
    if parent != "/" {
        out.push('/');
    }
    out.push_str(name);
}

/// Whether `child` is `parent` or lies below it, at most `depth` levels down when a
/// depth is given (C xenstored's `is_child()`, including its treatment of a one-byte
/// parent such as `/` or `@` as matching everything that starts with that byte).
pub(super) fn is_child(child: &str, parent: &str, depth: Option<u32>) -> bool {
    let (c, p) = (child.as_bytes(), parent.as_bytes());
    if !c.starts_with(p) {
        return false;
    }
    let len = p.len();
    let next = c.get(len).copied();
    if len > 1 && !matches!(next, None | Some(b'/')) {
        return false;
    }
    let Some(depth) = depth else {
        return true;
    };
    if next.is_none() {
        return true;
    }
    let below = c[len..].iter().filter(|&&b| b == b'/').count();
    let levels = below + usize::from(len == 1);
    levels <= depth as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_drivers::abi::xs_wire::XENSTORE_REL_PATH_MAX;

    fn canon(raw: &str, special: bool) -> Result<Canonical, XenErrno> {
        canonicalize(raw.as_bytes(), 7, special, Some(XENSTORE_REL_PATH_MAX))
    }

    #[test]
    fn absolute_relative_and_special() {
        assert_eq!(
            canon("/a/b", false),
            Ok(Canonical {
                path: "/a/b".into(),
                relative: false
            })
        );
        assert_eq!(
            canon("device/vbd", false),
            Ok(Canonical {
                path: "/local/domain/7/device/vbd".into(),
                relative: true
            })
        );
        assert_eq!(canon("/", false).map(|c| c.path), Ok("/".into()));
        assert_eq!(canon("@releaseDomain", true).map(|c| c.relative), Ok(false));
        assert_eq!(canon("@releaseDomain", false), Err(XenErrno::EINVAL));
        // '@' is an ordinary character after the first byte.
        assert!(canon("/a@b", false).is_ok());
    }

    #[test]
    fn malformed_paths() {
        for bad in [
            "", "/a/", "a/", "//", "/a//b", "/a b", "/a\0", "/a.b", "/ä", "@x/", "/a\n",
        ] {
            assert_eq!(canon(bad, true), Err(XenErrno::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn length_limits() {
        let long = format!("/{}", "x".repeat(XENSTORE_ABS_PATH_MAX - 1));
        assert!(canonicalize(long.as_bytes(), 0, false, None).is_ok());
        let too_long = format!("{long}y");
        assert_eq!(
            canonicalize(too_long.as_bytes(), 0, false, None),
            Err(XenErrno::EINVAL)
        );
        // The relative quota counts below /local/domain/<n>/ only.
        let rel = "r".repeat(XENSTORE_REL_PATH_MAX);
        assert!(canon(&rel, false).is_ok());
        assert_eq!(canon(&format!("{rel}r"), false), Err(XenErrno::EINVAL));
        let abs = format!("/local/domain/3/{rel}");
        assert!(canon(&abs, false).is_ok());
        // Outside /local/domain the whole path counts.
        let other = format!("/{}", "o".repeat(XENSTORE_REL_PATH_MAX));
        assert_eq!(canon(&other, false), Err(XenErrno::EINVAL));
        assert!(canonicalize(other.as_bytes(), 0, false, None).is_ok());
    }

    #[test]
    fn local_offsets() {
        assert_eq!(local_offset("/local/domain/5/x"), 16);
        assert_eq!(local_offset("/local/domain/65535/x"), 20);
        assert_eq!(local_offset("/local/domain/123456/x"), 0);
        assert_eq!(local_offset("/local/domain/5"), 0);
        assert_eq!(local_offset("/local/domain/x/y"), 0);
        assert_eq!(local_offset("/vm/x"), 0);
    }

    #[test]
    fn parents_and_names() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        assert_eq!(parent("@releaseDomain"), "/");
        assert_eq!(parent("@releaseDomain/5"), "@releaseDomain");
        assert_eq!(basename("/a/b/c"), "c");
        assert_eq!(basename("/a"), "a");
        assert_eq!(child_path("/", "a"), "/a");
        assert_eq!(child_path("/a", "b"), "/a/b");
        let mut buf = String::from("junk");
        for (p, n) in [("/", "a"), ("/a", "b"), ("@w", "5"), ("/a", ""), ("", "x")] {
            child_path_into(&mut buf, p, n);
            assert_eq!(buf, child_path(p, n));
            for path in ["/a", "/a/b", "@w/5", "/a/", "/x", "x", "/", "//a", "/ab"] {
                assert_eq!(
                    is_child_path(path, p, n),
                    child_path(p, n) == path,
                    "{path} {p} {n}"
                );
            }
        }
    }

    #[test]
    fn child_matching() {
        assert!(is_child("/a", "/a", None));
        assert!(is_child("/a/b/c", "/a", None));
        assert!(!is_child("/ab", "/a", None));
        assert!(!is_child("/a", "/a/b", None));
        assert!(is_child("/anything", "/", None));
        assert!(!is_child("@releaseDomain", "/", None));
        // Depth limits.
        assert!(is_child("/a", "/a", Some(0)));
        assert!(!is_child("/a/b", "/a", Some(0)));
        assert!(is_child("/a/b", "/a", Some(1)));
        assert!(!is_child("/a/b/c", "/a", Some(1)));
        assert!(is_child("/a/b/c", "/a", Some(2)));
        assert!(is_child("/a", "/", Some(1)));
        assert!(!is_child("/a/b", "/", Some(1)));
        assert!(is_child("/", "/", Some(0)));
        assert!(is_child("@releaseDomain/5", "@releaseDomain", Some(1)));
        assert!(!is_child("@releaseDomain/5", "@releaseDomain", Some(0)));
    }
}
