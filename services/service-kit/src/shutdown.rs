//! The shutdown trigger of a deployed service: SIGTERM (Kubernetes) or Ctrl-C.

use std::future::Future;

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are registered when this is called,
/// not when the future is first polled, so a SIGTERM during start-up (joining the group,
/// restoring state) is a clean stop rather than the default kill; call it inside the runtime.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let (mut interrupt, mut terminate) = match (interrupt, terminate) {
                (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM or ctrl-c");
                    return std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("ctrl-c received"),
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("ctrl-c received");
        } else {
            std::future::pending::<()>().await;
        }
    }
}
