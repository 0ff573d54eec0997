//! A TCP proxy for network faults (feature `testing`): in-process, on
//! loopback, between clients and a server (reached at a TCP address or a
//! Unix socket), that can cut, reset, delay and heal the traffic it
//! carries.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where a [`Proxy`] forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket's path (PostgreSQL's: `<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Upstream {
        Upstream::Tcp(addr)
    }
}

/// One side of a carried connection.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

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
    sockets: Mutex<Vec<(u64, Stream, Stream)>>,
    stopped: AtomicBool,
}

/// A proxy on a loopback port of its own, forwarding every connection to
/// `target`, that can cut, reset, delay and heal the traffic it carries.
/// Dropping it closes every connection it carries and stops accepting.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy to `target`: a TCP address (`SocketAddr` converts)
    /// or a Unix socket.
    ///
    /// # Errors
    ///
    /// A port cannot be bound.
    pub fn start(target: impl Into<Upstream>) -> std::io::Result<Proxy> {
        let target = target.into();
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
            a.shutdown(Shutdown::Both);
            b.shutdown(Shutdown::Both);
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

fn accept(listener: &TcpListener, target: Upstream, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = client else { continue };
        let _ = client.set_nodelay(true);
        let server = match &target {
            Upstream::Tcp(addr) => TcpStream::connect_timeout(addr, Duration::from_secs(5))
                .inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
                .map(Stream::Tcp),
            Upstream::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
        };
        let client = Stream::Tcp(client);
        let Ok(server) = server else {
            client.shutdown(Shutdown::Both);
            continue;
        };
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
fn pump(mut from: Stream, mut to: Stream, generation: u64, shared: &Shared) {
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
                to.shutdown(Shutdown::Both);
                from.shutdown(Shutdown::Both);
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
    to.shutdown(Shutdown::Write);
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
    fn a_unix_socket_upstream_is_carried_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("echo.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 16];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        let proxy = Proxy::start(Upstream::Unix(path)).expect("proxy");
        let mut conn = TcpStream::connect(proxy.addr()).expect("connect");
        assert_eq!(round_trip(&mut conn, b"unix").expect("carried"), b"unix");
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
