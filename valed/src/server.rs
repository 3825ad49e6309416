//! The control socket: accepts clients, reads one request per message,
//! answers through the registry, and reclaims a client's port when its
//! connection closes (exit, crash or SIGKILL alike).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use netmap::ctrl::{recv_request, send_reply, Reply};
use netmap::sys::{poll, PollFd, PollFlags};
use tracing::{debug, info, warn};

use crate::signal::StopSignals;
use crate::state::{Conn, Registry};

struct Client {
    fd: OwnedFd,
    conn: Conn,
}

/// How long the listener rests after accept ran out of descriptors: the
/// pending connection stays readable, so polling it again at once would
/// spin.
const ACCEPT_REST: Duration = Duration::from_millis(500);

/// Serves `listener` until SIGTERM/SIGINT.
///
/// The control thread never waits on one client: client sockets are
/// non-blocking (valed alone holds their open file descriptions), a
/// request is read only when poll says one is there, and a client whose
/// receive queue is full when its reply is sent (it sends requests and
/// does not read) is disconnected.
pub fn serve(listener: OwnedFd, reg: &mut Registry, signals: &StopSignals) -> std::io::Result<()> {
    let mut clients: HashMap<u64, Client> = HashMap::new();
    let mut next_id = 1u64;
    let mut resting: Option<Instant> = None;
    loop {
        let ids: Vec<u64> = clients.keys().copied().collect();
        let listen = resting.is_none_or(|t| t.elapsed() >= ACCEPT_REST);
        if listen {
            resting = None;
        }
        // While resting, the listener is polled for nothing (no events).
        let mut fds = vec![
            PollFd::new(
                listener.as_fd(),
                if listen { PollFlags::IN } else { PollFlags(0) },
            ),
            PollFd::new(signals.as_fd(), PollFlags::IN),
        ];
        for id in &ids {
            fds.push(PollFd::new(
                clients[id].fd.as_fd(),
                PollFlags::IN | PollFlags::RDHUP,
            ));
        }
        poll(&mut fds, (!listen).then_some(ACCEPT_REST))?;
        let revents: Vec<PollFlags> = fds.iter().map(|p| p.revents).collect();
        drop(fds);
        if revents[1].intersects(PollFlags::IN) {
            if let Some(sig) = signals.take() {
                info!(signal = sig, "stopping");
                break;
            }
        }
        if revents[0].intersects(PollFlags::IN) {
            match netmap::sys::accept(&listener) {
                Ok(fd) if netmap::sys::set_nonblocking(&fd).is_err() => drop(fd),
                Ok(fd) => {
                    let uid = netmap::sys::peer_cred(&fd).map(|c| c.1).unwrap_or(u32::MAX);
                    let id = next_id;
                    next_id += 1;
                    debug!(conn = id, uid, "client connected");
                    clients.insert(
                        id,
                        Client {
                            fd,
                            conn: Conn { id, uid, reg: None },
                        },
                    );
                }
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        resting = Some(Instant::now());
                    }
                    warn!("accept: {e}");
                }
            }
        }
        for (k, id) in ids.iter().enumerate() {
            let ev = revents[2 + k];
            if ev.is_empty() {
                continue;
            }
            let mut close = false;
            if ev.intersects(PollFlags::IN) {
                let c = clients.get_mut(id).expect("present");
                match recv_request(&c.fd) {
                    Ok(Some((req, _fds))) => {
                        let (error, answer, fds) = reg.handle(&mut c.conn, &req);
                        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                        if let Err(e) = send_reply(&c.fd, &Reply { error, req: answer }, &borrowed)
                        {
                            // EAGAIN included: a client that does not read
                            // its replies is let go.
                            warn!(
                                conn = id,
                                uid = c.conn.uid,
                                "reply not sent, client dropped: {e}"
                            );
                            close = true;
                        }
                    }
                    Ok(None) => close = true,
                    Err(netmap::ctrl::CtrlError::Io(e))
                        if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        // Garbage: answer with the errno it maps to, then
                        // keep the connection (it may send a good one next).
                        debug!(conn = id, "bad request: {e}");
                        if send_reply(&c.fd, &Reply::failure(e.errno()), &[]).is_err() {
                            close = true;
                        }
                    }
                }
            } else if ev
                .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL)
            {
                close = true;
            }
            if close {
                if let Some(mut c) = clients.remove(id) {
                    debug!(conn = id, fd = c.fd.as_raw_fd(), "client gone");
                    reg.unregister(&mut c.conn);
                }
            }
        }
    }
    for (_, mut c) in clients.drain() {
        reg.unregister(&mut c.conn);
    }
    Ok(())
}

/// Prepares the socket path: creates its directory, refuses to take over a
/// socket another valed still answers on, removes a stale one.
pub fn prepare_path(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    if path.exists() {
        if netmap::ctrl::CtrlConn::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another valed is running", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    Ok(())
}
