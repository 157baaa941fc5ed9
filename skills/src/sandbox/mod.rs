//! The external-systems sandbox (CONTRACT.md section 6). Documentation is being written.

pub mod faults;
pub mod salesforce;
pub mod seed;
mod server;
pub mod soql;
pub mod state;
pub mod stripe;
pub mod twilio;

pub use server::router;
pub use state::{SandboxState, SharedState};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util_free::Cancel;

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts sandboxes.
pub struct Sandbox;

impl Sandbox {
    /// Binds `addr` (port 0 picks a free port) and serves the sandbox, seeded with `seed`, on a
    /// tokio task until [`SandboxHandle::shutdown`] or until the handle is dropped.
    pub async fn start(addr: SocketAddr, seed: u64) -> Result<SandboxHandle, SandboxError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let state: SharedState = Arc::new(Mutex::new(SandboxState::new(seed)));
        let app = router(state.clone());
        let cancel = Cancel::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "sandbox server stopped with an error");
            }
        });
        tracing::debug!(addr = %local, seed, "sandbox listening");
        Ok(SandboxHandle {
            addr: local,
            state,
            cancel,
            task: Some(task),
        })
    }
}

/// A running sandbox. Dropping it stops the server (abruptly); [`SandboxHandle::shutdown`]
/// stops it gracefully.
pub struct SandboxHandle {
    addr: SocketAddr,
    state: SharedState,
    cancel: Cancel,
    task: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    /// e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live state (for in-process inspection; the HTTP ledger shows the same).
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// Stops accepting connections, lets in-flight requests finish for up to one second, then
    /// stops the server.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A tiny cancellation flag (the skills crate does not depend on tokio-util).
mod tokio_util_free {
    use std::sync::Arc;
    use tokio::sync::watch;

    #[derive(Clone)]
    pub struct Cancel(Arc<watch::Sender<bool>>);

    impl Cancel {
        pub fn new() -> Self {
            Self(Arc::new(watch::channel(false).0))
        }

        pub fn cancel(&self) {
            self.0.send_replace(true);
        }

        pub async fn cancelled(&self) {
            let mut rx = self.0.subscribe();
            // An error means the sender is gone, which only happens once every clone dropped.
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}
