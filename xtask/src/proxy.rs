//! A loopback TCP proxy that counts what clients send and can cut every live connection at once, as a dead link would.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;

#[derive(Debug, Default)]
struct State {
    /// Bytes clients sent through the proxy (TLS records and all).
    sent: AtomicU64,
    next_id: AtomicU64,
    /// Both ends of every live connection, so `cut` can shut them down.
    live: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    stopping: AtomicBool,
}

/// Forwards connections on `addr` to a target; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    pub addr: String,
    state: Arc<State>,
}

impl Proxy {
    pub fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the proxy")?;
        let addr = listener.local_addr()?.to_string();
        let state = Arc::new(State::default());
        let accepting = Arc::clone(&state);
        let target = target.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                // A target that is down (a daemon restarting) refuses the
                // client as it would have refused a direct connection.
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = forward(client, server, &accepting);
            }
        });
        Ok(Proxy { addr, state })
    }

    pub fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::Relaxed)
    }

    /// Connections open through the proxy now.
    pub fn live(&self) -> usize {
        self.state
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Shuts down every live connection in both directions; returns how many.
    pub fn cut(&self) -> usize {
        let live = self
            .state
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, client, server) in live.iter() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        live.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so it sees that it must stop.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn forward(client: TcpStream, server: TcpStream, state: &Arc<State>) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    state
        .live
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((id, client.try_clone()?, server.try_clone()?));
    let (client_in, server_out) = (client.try_clone()?, server.try_clone()?);
    let upstream = Arc::clone(state);
    std::thread::spawn(move || pump(client_in, server_out, Some(&upstream.sent)));
    let downstream = Arc::clone(state);
    std::thread::spawn(move || {
        pump(server, client, None);
        downstream
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(live, _, _)| *live != id);
    });
    Ok(())
}

/// Copies `from` into `to` until either fails, then shuts both down so the
/// other direction ends too.
fn pump(mut from: TcpStream, mut to: TcpStream, counter: Option<&AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(counter) = counter {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
