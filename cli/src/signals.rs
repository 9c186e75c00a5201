//! SIGINT and SIGTERM: the first asks the running operation to take its
//! failure path (switch hosts back, thaw, unlock, write the log) through a
//! [`CancellationToken`]; the second exits at once with 128 + the signal
//! (host-side watchdogs still release what was held).

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use ec2kit::CancellationToken;

/// SIGINT's number.
pub(crate) const SIGINT: i32 = 2;
/// SIGTERM's number.
pub(crate) const SIGTERM: i32 = 15;

/// The run's interruption state: a token the libraries watch, and which
/// signal arrived first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interrupt {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    /// Listens for SIGINT and SIGTERM on the current tokio runtime. If the
    /// handlers cannot be installed the run goes on without them (a signal
    /// then kills the process, as before), with a warning.
    pub(crate) fn install() -> Self {
        let this = Self::default();
        let listener = this.clone();
        tokio::spawn(async move {
            if let Err(e) = listener.listen().await {
                tracing::warn!("signals will not be handled: {e}");
            }
        });
        this
    }

    async fn listen(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        loop {
            let signo = tokio::select! {
                _ = int.recv() => SIGINT,
                _ = term.recv() => SIGTERM,
            };
            if self
                .signal
                .compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                eprintln!("error: second signal: exiting now");
                std::process::exit(128 + signo);
            }
            eprintln!("interrupted: finishing safely (a second signal exits at once)");
            self.token.cancel();
        }
    }

    /// The token every long operation of this run watches.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The exit code for the signal that arrived, if one did: 130 for
    /// SIGINT, 143 for SIGTERM.
    pub(crate) fn exit_code(&self) -> Option<u8> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            n => u8::try_from(128 + n).ok(),
        }
    }
}
