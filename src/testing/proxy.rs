//! A TCP proxy for network faults (feature `testing`): in-process, on
//! loopback, between clients and a server, that can cut, reset, delay and
//! heal the traffic it carries.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What a [`Proxy`] does with the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forwards at once.
    Open,
    /// Forwards nothing and closes nothing: a partition. Each side's kernel
    /// still acknowledges what it sends to the proxy, so, as behind a
    /// stateful middlebox, neither side's TCP notices; what was sent
    /// meanwhile arrives after [`Proxy::heal`], as retransmissions would.
    Cut,
    /// Forwards each chunk this long after it arrived, in order.
    Delay(Duration),
}

#[derive(Debug)]
struct State {
    link: Link,
    /// Bumped by each reset: pumps of connections older than it stop.
    generation: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Every connection's two sockets, to close them on a reset.
    sockets: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    stopped: AtomicBool,
}

/// A proxy on a loopback port of its own, forwarding every connection to
/// `target`; see the [module docs](self). Dropping it closes every
/// connection it carries and stops accepting.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy to `target` (a loopback TCP address).
    ///
    /// # Errors
    ///
    /// A port cannot be bound.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                link: Link::Open,
                generation: 0,
            }),
            changed: Condvar::new(),
            sockets: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("leasehold-proxy".into())
            .spawn(move || accept(&listener, target, &accepting))?;
        Ok(Proxy { addr, shared })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the proxy does now.
    pub fn link(&self) -> Link {
        self.lock().link
    }

    /// Stops forwarding (see [`Link::Cut`]).
    pub fn cut(&self) {
        self.set(Link::Cut);
    }

    /// Forwards with `delay` (see [`Link::Delay`]).
    pub fn delay(&self, delay: Duration) {
        self.set(Link::Delay(delay));
    }

    /// Forwards at once again, first whatever a cut held back.
    pub fn heal(&self) {
        self.set(Link::Open);
    }

    /// Closes every connection now carried (both sides see it closed); new
    /// connections are carried as the link says.
    pub fn reset(&self) {
        self.lock().generation += 1;
        self.shared.changed.notify_all();
        let mut sockets = self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, a, b) in sockets.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    fn set(&self, link: Link) {
        self.lock().link = link;
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.reset();
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

fn accept(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let generation = shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation;
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((generation, c3, s3));
        let up = Arc::clone(shared);
        let down = Arc::clone(shared);
        let _ = std::thread::Builder::new()
            .name("leasehold-proxy-up".into())
            .spawn(move || pump(client, s2, generation, &up));
        let _ = std::thread::Builder::new()
            .name("leasehold-proxy-down".into())
            .spawn(move || pump(server, c2, generation, &down));
    }
}

/// Copies `from` to `to` as the link says, until either side closes or a
/// reset ends this connection's generation.
fn pump(mut from: TcpStream, mut to: TcpStream, generation: u64, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let arrived = Instant::now();
        // Wait while cut, and until the chunk's delay has passed.
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.generation != generation || shared.stopped.load(Ordering::Acquire) {
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            match st.link {
                Link::Open => break,
                Link::Cut => {
                    st = shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                Link::Delay(delay) => {
                    let due = arrived + delay;
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    st = shared
                        .changed
                        .wait_timeout(st, due - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        drop(st);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(conn: &mut TcpStream, what: &[u8]) -> std::io::Result<Vec<u8>> {
        conn.write_all(what)?;
        let mut got = vec![0u8; what.len()];
        conn.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn a_cut_holds_traffic_without_closing_and_a_heal_delivers_it() {
        let proxy = Proxy::start(echo()).expect("proxy");
        let mut conn = TcpStream::connect(proxy.addr()).expect("connect");
        assert_eq!(round_trip(&mut conn, b"one").expect("open"), b"one");
        proxy.cut();
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        conn.write_all(b"two").expect("the write is accepted");
        let mut buf = [0u8; 3];
        let err = conn.read_exact(&mut buf).expect_err("nothing comes back");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection stays open: {err}"
        );
        proxy.heal();
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        conn.read_exact(&mut buf).expect("delivered after the heal");
        assert_eq!(&buf, b"two");
    }

    #[test]
    fn a_reset_closes_the_connections_it_carries() {
        let proxy = Proxy::start(echo()).expect("proxy");
        let mut conn = TcpStream::connect(proxy.addr()).expect("connect");
        assert_eq!(round_trip(&mut conn, b"x").expect("open"), b"x");
        proxy.reset();
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)), "closed");
        // New connections go through.
        let mut again = TcpStream::connect(proxy.addr()).expect("connect");
        assert_eq!(round_trip(&mut again, b"y").expect("open"), b"y");
    }

    #[test]
    fn a_delay_holds_each_chunk_for_its_length() {
        let proxy = Proxy::start(echo()).expect("proxy");
        let mut conn = TcpStream::connect(proxy.addr()).expect("connect");
        proxy.delay(Duration::from_millis(100));
        let began = Instant::now();
        assert_eq!(round_trip(&mut conn, b"z").expect("delayed"), b"z");
        // Both directions: at least twice the delay.
        assert!(began.elapsed() >= Duration::from_millis(200));
    }
}
