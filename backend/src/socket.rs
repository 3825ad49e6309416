//! A port's vhost-user socket, as root makes it for a tenant: bound
//! without replacing anything but a stale socket of the same owner, handed
//! to the owner (mode 0600), and every connection's peer checked to be that
//! owner.
//!
//! The path itself (which directory a tenant may use) is the daemon's
//! policy (valed: `--vhost-dir`); this module enforces what holds for
//! every path: valed is root, and `unlink` + `bind` on a path a tenant
//! names would let the tenant delete any file or take over another
//! tenant's VM socket.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why a socket could not be made or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something that is not a socket is at the path.
    #[error("{path}: exists and is not a socket; not replaced")]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// A live socket is at the path.
    #[error("{path}: a socket in use is there")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket of another uid is at the path.
    #[error("{path}: a socket of uid {uid} is there, not the port owner's ({owner})")]
    NotOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The port's owner.
        owner: u32,
    },
    /// A tenant's socket was asked for in a directory others can change.
    #[error("{dir}: a tenant's socket must be in a directory no one but valed's uid can write")]
    OpenDir {
        /// The directory.
        dir: PathBuf,
    },
    /// An OS call failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl SocketError {
    /// The errno a control request answers with.
    pub fn errno(&self) -> i32 {
        match self {
            SocketError::Exists { .. } => libc::EEXIST,
            SocketError::InUse { .. } => libc::EADDRINUSE,
            SocketError::NotOwner { .. } | SocketError::OpenDir { .. } => libc::EPERM,
            SocketError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Who may connect to a socket [`bind`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// As bind(2) makes it, under the process umask.
    AsMade,
    /// A tenant's (this uid's): owned by it, mode 0600.
    Tenant(u32),
    /// Root's VM socket: mode 0600, or 0660 with this group (the VMMs
    /// root lets in, such as libvirt's QEMU), never reachable through the
    /// group tenants use for the control socket by accident of the umask.
    Root {
        /// The group that may connect.
        group: Option<u32>,
    },
}

/// Binds a listening socket at `path` with permissions `perm`. An
/// existing entry is replaced only if it is a socket nobody listens on,
/// owned by the tenant for [`Perm::Tenant`] (by anyone otherwise); a
/// symlink is never followed nor replaced.
///
/// Every step after the directory is opened names the entry inside that
/// open directory (`netmap::sys::Dir`), so renaming a directory on the way
/// or putting a symlink in its place cannot move the unlink or the chown
/// onto another file. A tenant's socket must moreover be in a directory
/// only valed's uid (or root) can change, so that the entry itself cannot
/// be swapped between the bind and the chown.
pub fn bind(path: &Path, perm: Perm) -> Result<UnixListener, SocketError> {
    let owner = match perm {
        Perm::Tenant(o) => Some(o),
        _ => None,
    };
    let io_err = |source| SocketError::Io {
        path: path.into(),
        source,
    };
    let (dir, name) = netmap::sys::Dir::open_parent(path).map_err(io_err)?;
    if owner.is_some() && !dir.is_private_to(netmap::sys::euid()).map_err(io_err)? {
        return Err(SocketError::OpenDir {
            dir: dir.path().into(),
        });
    }
    let at = dir.entry(name).map_err(io_err)?;
    if at.as_os_str().len() > netmap::sys::SUN_PATH_MAX {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "file name too long for a socket ({} bytes; at most {})",
                name.len(),
                netmap::sys::SUN_PATH_MAX + name.len() - at.as_os_str().len()
            ),
        )));
    }
    match std::fs::symlink_metadata(&at) {
        Ok(md) => {
            if !md.file_type().is_socket() {
                return Err(SocketError::Exists { path: path.into() });
            }
            if let Some(o) = owner {
                if md.uid() != o {
                    return Err(SocketError::NotOwner {
                        path: path.into(),
                        uid: md.uid(),
                        owner: o,
                    });
                }
            }
            // Live if someone listens: a connection taken, or a backlog
            // so full it would block (a listener that never accepts must
            // not stall valed here).
            match netmap::sys::stream_connect_nonblocking(&at) {
                Ok(_) => return Err(SocketError::InUse { path: path.into() }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(SocketError::InUse { path: path.into() })
                }
                Err(_) => {}
            }
            std::fs::remove_file(&at).map_err(io_err)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    // bind(2) fails on anything that appeared meanwhile (EADDRINUSE),
    // symlinks included.
    // Made 0600 (root's, the moment it exists); its owner, group and final
    // mode follow.
    let l = match perm {
        Perm::AsMade => UnixListener::bind(&at),
        _ => netmap::sys::stream_listen(&at, 0o600, 128),
    }
    .map_err(io_err)?;
    // The owner and mode are set on the inode opened here without
    // following a symlink and checked to be the socket just made, never by
    // a path looked up again (chmod(2) follows a final symlink): for a
    // tenant the directory is valed's alone, but root may name a directory
    // others can write.
    let r = match perm {
        Perm::AsMade => Ok(()),
        Perm::Tenant(o) => set_owner_mode(&at, Some(o), None, 0o600),
        Perm::Root { group: None } => set_owner_mode(&at, None, None, 0o600),
        Perm::Root { group: Some(g) } => set_owner_mode(&at, None, Some(g), 0o660),
    };
    if let Err(e) = r {
        let _ = std::fs::remove_file(&at);
        return Err(io_err(e));
    }
    l.set_nonblocking(true).map_err(io_err)?;
    Ok(l)
}

/// Gives the socket at `at` owner `uid`/`gid` (None: unchanged) and
/// `mode`, through an `O_PATH` descriptor of it: a symlink put there is
/// refused, not followed.
fn set_owner_mode(at: &Path, uid: Option<u32>, gid: Option<u32>, mode: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(at)?;
    // Ours, just bound: a socket of valed's uid with one name. Not another
    // socket hard-linked in its place by someone who can write the
    // directory (root may name any).
    let md = f.metadata()?;
    if !md.file_type().is_socket() || md.uid() != netmap::sys::euid() || md.nlink() != 1 {
        return Err(io::Error::other(
            "replaced by something other than the socket just made",
        ));
    }
    let me = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(&me, uid, gid)?;
    }
    std::fs::set_permissions(&me, std::fs::Permissions::from_mode(mode))
}

/// Removes the socket at `path` if it is the one with `id` (device,
/// inode), looked up and removed through its directory held open; a
/// socket bound there since, or anything else, stays.
pub fn unlink_if(path: &Path, id: (u64, u64)) {
    let Ok((dir, name)) = netmap::sys::Dir::open_parent(path) else {
        return;
    };
    let Ok(at) = dir.entry(name) else {
        return;
    };
    if let Ok(md) = std::fs::symlink_metadata(&at) {
        if md.file_type().is_socket() && (md.dev(), md.ino()) == id {
            let _ = std::fs::remove_file(&at);
        }
    }
}

/// Connects, without blocking, to the socket at `path` for a client-mode
/// port owned by `owner` (None: root's, connected as named). A tenant's
/// socket is opened first without following a final symlink, checked to
/// be a socket of that tenant, and connected to through that open file
/// (`/proc/self/fd/N`): the tenant cannot swap it, between the check and
/// the connect or between two reconnects, for a symlink to a socket only
/// root may reach.
pub fn connect(path: &Path, owner: Option<u32>) -> io::Result<UnixStream> {
    let Some(o) = owner else {
        return netmap::sys::stream_connect_nonblocking(path);
    };
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)?;
    let md = f.metadata()?;
    if !md.file_type().is_socket() || md.uid() != o {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: not a socket of uid {o}", path.display()),
        ));
    }
    use std::os::fd::AsRawFd;
    netmap::sys::stream_connect_nonblocking(Path::new(&format!("/proc/self/fd/{}", f.as_raw_fd())))
}

/// Whether the process at the other end of `s` may serve a port owned by
/// `owner`: root's ports take any VMM; a tenant's only a VMM of the same
/// uid (for a client-mode port, the VMM that listens; so a tenant cannot
/// point its port at another tenant's VM socket).
pub fn check_peer(s: &UnixStream, owner: Option<u32>) -> Result<(), String> {
    let Some(o) = owner else {
        return Ok(());
    };
    let (pid, uid, _) =
        netmap::sys::peer_cred(s).map_err(|e| format!("cannot read the VMM's credentials: {e}"))?;
    if uid != o {
        return Err(format!(
            "the VMM at the other end (pid {pid}) runs as uid {uid}, not as the port owner (uid {o}): refused"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vale-socket-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // valed refuses socket directories others can write, whatever the umask.
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn never_replaces_files_symlinks_or_live_sockets() {
        let d = dir("replace");
        let f = d.join("victim");
        std::fs::write(&f, b"precious").unwrap();
        assert!(matches!(
            bind(&f, Perm::AsMade),
            Err(SocketError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&f).unwrap(), b"precious");
        let l = d.join("link");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert!(matches!(
            bind(&l, Perm::AsMade),
            Err(SocketError::Exists { .. })
        ));
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
        assert!(bind(&dangling, Perm::AsMade).is_err());
        assert!(!d.join("nowhere").exists());
        let s = d.join("s.sock");
        let live = bind(&s, Perm::AsMade).unwrap();
        let e = bind(&s, Perm::AsMade).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
        assert_eq!(e.errno(), libc::EADDRINUSE);
        drop(live);
        // Stale now: replaced.
        let _again = bind(&s, Perm::AsMade).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn tenant_sockets_are_the_tenants() {
        let d = dir("owner");
        let s = d.join("t.sock");
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        let l = bind(&s, Perm::Tenant(me)).unwrap();
        let md = std::fs::symlink_metadata(&s).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(md.uid(), me);
        drop(l);
        // A stale socket of another uid is not taken over.
        let other = me.wrapping_add(12345);
        let e = bind(&s, Perm::Tenant(other)).unwrap_err();
        assert!(matches!(e, SocketError::NotOwner { .. }), "{e}");
        assert_eq!(e.errno(), libc::EPERM);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn tenant_sockets_only_in_directories_others_cannot_change() {
        let d = dir("open");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let s = d.join("t.sock");
        let me = netmap::sys::euid();
        let e = bind(&s, Perm::Tenant(me)).unwrap_err();
        assert!(matches!(e, SocketError::OpenDir { .. }), "{e}");
        assert_eq!(e.errno(), libc::EPERM);
        assert!(!s.exists());
        // Root's own sockets are root's business.
        let _l = bind(&s, Perm::AsMade).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn roots_vm_sockets_are_roots_or_a_named_groups() {
        let d = dir("root");
        let s = d.join("vm.sock");
        let l = bind(&s, Perm::Root { group: None }).unwrap();
        let md = std::fs::symlink_metadata(&s).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        drop(l);
        // A group of our own (any process may give a file its own group).
        let gid = std::fs::metadata("/proc/self").unwrap().gid();
        let _l = bind(&s, Perm::Root { group: Some(gid) }).unwrap();
        let md = std::fs::symlink_metadata(&s).unwrap();
        assert_eq!((md.mode() & 0o777, md.gid()), (0o660, gid));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn names_too_long_for_a_socket_are_refused_by_name() {
        let d = dir("long");
        let e = bind(&d.join("x".repeat(100)), Perm::AsMade).unwrap_err();
        assert!(e.to_string().contains("too long for a socket"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_tenants_client_port_connects_only_to_that_tenants_socket() {
        let d = dir("connect");
        let s = d.join("vm.sock");
        let _l = UnixListener::bind(&s).unwrap();
        let me = netmap::sys::euid();
        assert!(connect(&s, None).is_ok());
        assert!(connect(&s, Some(me)).is_ok());
        let e = connect(&s, Some(me.wrapping_add(1))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // A symlink to it is not followed, even to the owner's own socket.
        let l = d.join("link.sock");
        std::os::unix::fs::symlink(&s, &l).unwrap();
        assert!(connect(&l, Some(me)).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn peers_of_another_uid_are_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert!(check_peer(&a, None).is_ok());
        assert!(check_peer(&a, Some(me)).is_ok());
        let e = check_peer(&a, Some(me.wrapping_add(1))).unwrap_err();
        assert!(e.contains("not as the port owner"), "{e}");
    }
}
