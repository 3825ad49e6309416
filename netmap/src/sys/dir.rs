//! Directories held open, so that a daemon running as root looks names up
//! in the directory it checked, not through a path whose components
//! someone else could rename or replace with a symlink between the check
//! and the use (unlink, chown, chmod and bind all take paths).

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Longest path `bind(2)` and `connect(2)` take for a Unix socket
/// (`sun_path` less its terminating NUL).
pub const SUN_PATH_MAX: usize = 107;

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A directory open as `O_PATH`: every name given to [`Dir::entry`] is
/// resolved in this directory, whatever happens to the path it was opened
/// by.
#[derive(Debug)]
pub struct Dir {
    fd: File,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path` (symlinks in it are followed once,
    /// now; check [`Dir::metadata`] for what was opened).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(path)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory `path` is in, opened, and `path`'s last component:
    /// the entry to look up in it with [`Dir::entry`]. A path of one
    /// component is in the working directory.
    pub fn open_parent(path: &Path) -> io::Result<(Dir, &OsStr)> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no file name", path.display()),
            )
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok((Dir::open(parent)?, name))
    }

    /// The path it was opened by, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's own metadata (of what was opened, not of what the
    /// path names now).
    pub fn metadata(&self) -> io::Result<Metadata> {
        self.fd.metadata()
    }

    /// A path that names `name` inside this directory for as long as this
    /// `Dir` is open: `/proc/self/fd/N/name`. The kernel resolves the
    /// `/proc/self/fd/N` part to the open directory itself; a symlink at
    /// `name` is followed or not as the call using the path does (lstat,
    /// unlink and lchown do not). `name` must be one component.
    pub fn entry(&self, name: &OsStr) -> io::Result<PathBuf> {
        if name.is_empty() || name.as_bytes().contains(&b'/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?}: not a file name"),
            ));
        }
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        p.push(name);
        Ok(p)
    }

    /// Whether only `uid` (or root) can add, remove or rename entries in
    /// this directory: owned by one of them, and neither group- nor
    /// world-writable.
    pub fn is_private_to(&self, uid: u32) -> io::Result<bool> {
        let md = self.metadata()?;
        Ok(private_to(&md, uid))
    }
}

/// Whether a directory with metadata `md` can be changed only by `uid` or
/// root.
fn private_to(md: &Metadata, uid: u32) -> bool {
    (md.uid() == uid || md.uid() == 0) && md.mode() & 0o022 == 0
}

/// The first place on the way to `dir` where someone other than `uid` or
/// root could swap what the path leads to: a directory writable by group
/// or others without the sticky bit (which keeps others' entries theirs),
/// or owned by another user; or a symlink owned by another user. Checked
/// are every prefix of the path as given (symlinks included, not
/// followed), the same for every symlink's target, and every directory
/// above the one the path resolves to. `None` if there is none.
pub fn first_open_ancestor(dir: &Path, uid: u32) -> io::Result<Option<PathBuf>> {
    let mut hops = 0;
    first_open_on_path(dir, uid, &mut hops)
}

/// Symlinks followed at most, as the kernel's own limit.
const MAX_HOPS: u32 = 40;

fn first_open_on_path(dir: &Path, uid: u32, hops: &mut u32) -> io::Result<Option<PathBuf>> {
    let open = |md: &Metadata| {
        let owner_ok = md.uid() == uid || md.uid() == 0;
        let sticky = md.mode() & 0o1000 != 0;
        !owner_ok || (md.mode() & 0o022 != 0 && !sticky)
    };
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    let mut p = PathBuf::new();
    let named = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    for c in abs.components() {
        p.push(c);
        let md = std::fs::symlink_metadata(&p).map_err(|e| named(&p, e))?;
        if md.file_type().is_symlink() {
            if md.uid() != uid && md.uid() != 0 {
                return Ok(Some(p));
            }
            *hops += 1;
            if *hops > MAX_HOPS {
                return Err(io::Error::other(format!(
                    "{}: more than {MAX_HOPS} symlinks",
                    dir.display()
                )));
            }
            let target = std::fs::read_link(&p).map_err(|e| named(&p, e))?;
            // Relative to where the link is, found without its own
            // symlinks again (they were checked on the way here).
            let target = match p.parent() {
                Some(up) if target.is_relative() => std::fs::canonicalize(up)
                    .map_err(|e| named(up, e))?
                    .join(target),
                _ => target,
            };
            if let Some(bad) = first_open_on_path(&target, uid, hops)? {
                return Ok(Some(bad));
            }
        } else if open(&md) {
            return Ok(Some(p));
        }
    }
    let real = std::fs::canonicalize(dir).map_err(|e| named(dir, e))?;
    let mut cur = Some(real.as_path());
    while let Some(d) = cur {
        if open(&std::fs::metadata(d).map_err(|e| named(d, e))?) {
            return Ok(Some(d.to_path_buf()));
        }
        cur = d.parent();
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vale-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn entries_stay_in_the_directory_opened() {
        let base = tmp("swap");
        let a = base.join("a");
        let b = base.join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let dir = Dir::open(&a).unwrap();
        // The path now names another directory, through a symlink.
        std::fs::rename(&a, base.join("a.moved")).unwrap();
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::fs::write(dir.entry(OsStr::new("f")).unwrap(), b"x").unwrap();
        assert!(base.join("a.moved/f").exists());
        assert!(!b.join("f").exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn entry_takes_one_component() {
        let base = tmp("names");
        let dir = Dir::open(&base).unwrap();
        for bad in ["", "a/b", ".", "..", "/etc"] {
            assert!(dir.entry(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        assert!(dir.entry(OsStr::new("ok.sock")).is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn open_ancestors_are_found() {
        let base = tmp("chain");
        let inner = base.join("x/y");
        std::fs::create_dir_all(&inner).unwrap();
        for d in [&base.join("x"), &inner] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let me = euid();
        // The temp dir itself is sticky (1777) or private: nothing open.
        assert_eq!(first_open_ancestor(&inner, me).unwrap(), None);
        std::fs::set_permissions(base.join("x"), std::fs::Permissions::from_mode(0o775)).unwrap();
        let found = first_open_ancestor(&inner, me).unwrap().unwrap();
        assert_eq!(
            std::fs::canonicalize(found).unwrap(),
            std::fs::canonicalize(base.join("x")).unwrap()
        );
        // Sticky: others' entries stay theirs.
        std::fs::set_permissions(base.join("x"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(first_open_ancestor(&inner, me).unwrap(), None);
        assert!(Dir::open(&inner).unwrap().is_private_to(me).unwrap());
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A symlink on the way, another user's: its owner could point it
        // elsewhere. (Owned by us it is fine: the target is checked.)
        let link = base.join("link");
        std::os::unix::fs::symlink(base.join("x"), &link).unwrap();
        assert_eq!(first_open_ancestor(&link.join("y"), me).unwrap(), None);
        // A chain: ours to another user's, which is found through ours.
        let chain = base.join("chain");
        std::os::unix::fs::symlink(&link, &chain).unwrap();
        assert_eq!(first_open_ancestor(&chain.join("y"), me).unwrap(), None);
        if me == 0 {
            std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
            let found = first_open_ancestor(&link.join("y"), me).unwrap().unwrap();
            assert!(found.ends_with("link"), "{}", found.display());
            let found = first_open_ancestor(&chain.join("y"), me).unwrap().unwrap();
            assert!(found.ends_with("link"), "{}", found.display());
        }
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(!Dir::open(&inner).unwrap().is_private_to(me).unwrap());
        let _ = std::fs::remove_dir_all(&base);
    }
}
