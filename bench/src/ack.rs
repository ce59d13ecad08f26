//! The bench's Openlayer-compatible endpoint: the shared fake (crate `fakes`) in fast-ack
//! mode, which acknowledges every data-stream request at once and only counts it.
//!
//! It runs on its own thread with a single-threaded runtime, so its CPU time can be read
//! from that one thread (`/proc/self/task/TID/schedstat`) and told apart from the
//! sessionizer's. In delay mode (the lag run only) it also records how long after its event
//! time each row arrived.

use crate::measure::current_tid;
use anyhow::{Context as _, Result};
use fakes::openlayer::{OpenlayerServer, Options};

/// The running server: its handle and its thread.
#[derive(Debug)]
pub(crate) struct AckServer {
    server: OpenlayerServer,
    tid: u32,
}

impl AckServer {
    /// Binds 127.0.0.1:0 and serves on a new thread until the process exits.
    pub(crate) fn start() -> Result<Self> {
        let (ready, started) = std::sync::mpsc::channel::<Result<(OpenlayerServer, u32)>>();
        std::thread::Builder::new()
            .name("ack-server".into())
            .spawn(move || {
                let served = (|| -> Result<()> {
                    let tid = current_tid()?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async {
                        let options = Options {
                            fast_ack: true,
                            ..Options::new("bench-key-not-a-secret")
                        };
                        let server = OpenlayerServer::try_start(options).await?;
                        let _ = ready.send(Ok((server, tid)));
                        // The server's task runs on this thread's runtime: keep it turning.
                        std::future::pending::<()>().await;
                        Ok(())
                    })
                })();
                if let Err(error) = served {
                    let _ = ready.send(Err(error));
                }
            })
            .context("spawning the ack server thread")?;
        let (server, tid) = started.recv().context("ack server thread ended")??;
        Ok(AckServer { server, tid })
    }

    /// What the sessionizer's `openlayer.base_url` is set to.
    pub(crate) fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub(crate) fn tid(&self) -> u32 {
        self.tid
    }

    pub(crate) fn rows(&self) -> u64 {
        self.server.num_acked_rows()
    }

    pub(crate) fn requests(&self) -> u64 {
        self.server.num_acked_requests()
    }

    pub(crate) fn body_bytes(&self) -> u64 {
        self.server.acked_body_bytes()
    }

    /// Zeroes the counters and turns delay recording on or off.
    pub(crate) fn reset(&self, measure_delays: bool) {
        self.server.reset_acks(measure_delays);
    }

    /// The delays recorded so far (seconds), leaving none.
    pub(crate) fn take_delays(&self) -> Vec<f64> {
        self.server.take_arrival_lags()
    }
}
