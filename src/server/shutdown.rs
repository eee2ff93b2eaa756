//! Draining: the signal that stops the accept loop and closes idle
//! connections, and the flag behind readiness.

use smol::channel::{self, Receiver, Sender};

/// A handle on the server's drain state; clones share it.
#[derive(Clone)]
pub struct Shutdown {
    /// Closed by [`Shutdown::begin`]; nothing is ever sent on it.
    signal: Sender<()>,
    /// Wakes every waiter when `signal` closes.
    closed: Receiver<()>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (signal, closed) = channel::bounded(1);
        Shutdown { signal, closed }
    }

    /// Starts draining: the accept loop stops, idle connections close, and
    /// each connection closes after its current response.
    pub fn begin(&self) {
        self.signal.close();
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        self.signal.is_closed()
    }

    /// Completes once draining has begun.
    pub async fn draining(&self) {
        // A closed channel with nothing in it fails every receive at once.
        let _ = self.closed.recv().await;
    }
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn begin_wakes_every_clone() {
        let shutdown = Shutdown::new();
        let clone = shutdown.clone();
        assert!(!clone.is_draining());
        assert!(future::block_on(future::poll_once(clone.draining())).is_none());

        shutdown.begin();

        assert!(clone.is_draining());
        future::block_on(clone.draining());
        future::block_on(shutdown.draining());
    }
}
