//! The gateway in-process, for tests that drive it with real clients.

use crate::service::free_local_address;
use gateway::config::GatewayConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The key clients present to the gateway.
pub const CLIENT_KEY: &str = "client-key-for-the-gateway";
/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(120);

/// A gateway run in-process by `gateway::run`, on free local ports.
#[derive(Debug)]
pub struct Gateway {
    /// The API's address.
    pub listen: SocketAddr,
    /// The operations endpoint's address.
    pub ops: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), gateway::RunError>>,
}

impl Gateway {
    /// Starts it on `topic` with client key [`CLIENT_KEY`]; `extra` environment overrides.
    ///
    /// Free ports are picked and then bound by the gateway: another process may take one in
    /// between, so a gateway that stops before it is ready is started again on new ports.
    pub async fn start(bootstrap: &str, topic: &str, extra: &[(&str, &str)]) -> Gateway {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut gateway = Gateway::spawn(bootstrap, topic, extra);
            match gateway.wait_ready().await {
                Ok(()) => return gateway,
                Err(stopped) if attempt < ATTEMPTS => {
                    eprintln!("the gateway stopped before it was ready ({stopped}); again");
                }
                Err(stopped) => panic!("the gateway stopped before it was ready: {stopped}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(bootstrap: &str, topic: &str, extra: &[(&str, &str)]) -> Gateway {
        let listen = free_local_address();
        let ops = free_local_address();
        let mut env: HashMap<String, String> = [
            ("GATEWAY__KAFKA__BOOTSTRAP_SERVERS", bootstrap),
            ("GATEWAY__KAFKA__TOPIC", topic),
            ("GATEWAY__AUTH__API_KEYS", CLIENT_KEY),
            ("GATEWAY__SHUTDOWN__UNREADY_DELAY_SECS", "0"),
            ("GATEWAY__OPS__READINESS_CHECK_MS", "200"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        env.insert("GATEWAY__HTTP__LISTEN".into(), listen.to_string());
        env.insert("GATEWAY__OPS__LISTEN".into(), ops.to_string());
        for (key, value) in extra {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        let config = GatewayConfig::load(None, env)
            .expect("loads")
            .validate()
            .expect("valid");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gateway::run(config, async move {
            let _stopped = stopped.await;
        }));
        Gateway {
            listen,
            ops,
            stop: Some(stop),
            task,
        }
    }

    /// The API base URL, as SDKs take it (`.../v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.listen)
    }

    pub async fn get_ops(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.ops))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Waits until `/readyz` answers 200; `Err` with how it ended when the gateway stopped
    /// first (a port taken meanwhile, say).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let until = Instant::now() + WAIT;
        while self.get_ops("/readyz").await.map(|(status, _)| status) != Some(200) {
            if self.task.is_finished() {
                return Err(format!("{:?}", (&mut self.task).await));
            }
            assert!(Instant::now() < until, "the gateway never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The sum of every series of metric `name` on `/metrics` whose labels contain `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, text) = self.get_ops("/metrics").await.expect("metrics answer");
        text.lines()
            .filter(|line| line.starts_with(name) && line.contains(labels))
            .filter(|line| line[name.len()..].starts_with(['{', ' ']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Signals shutdown as SIGTERM would, without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _sent = stop.send(());
        }
    }

    /// Ends it at once, whatever it is doing.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Stops it as SIGTERM would and checks it stopped cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _sent = stop.send(());
        }
        let stopped = tokio::time::timeout(WAIT, &mut self.task).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the gateway stops cleanly: {stopped:?}"
        );
    }
}
