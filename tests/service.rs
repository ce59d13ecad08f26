//! The `sessionizer` executable as a child process, configured as a deployment configures it,
//! and what its shipped rows must look like: shared by the binary tests and the reliability
//! suite.

use crate::{ServiceTopics, bootstrap, sessionizer_path};
use fakes::openlayer::OpenlayerServer;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use trace_model::TraceEvent;

pub const PIPELINE: &str = "pipeline-binary";
/// What the test broker needs for quick joins (it holds each JoinGroup for half of it).
pub const SESSION_TIMEOUT_MS: u64 = 6000;
/// Shorter than the session timeout, as validation requires.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond the drain deadline: the final commit, the producer flush and leaving the group.
pub const EXIT_MARGIN: Duration = Duration::from_secs(20);
/// Bound of every wait for the pipeline to do something (a join alone takes about 3 s).
pub const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// The child process
// ---------------------------------------------------------------------------------------------

/// A loopback address nothing listens on right now.
pub fn free_local_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("bound address")
}

pub type Captured = Arc<Mutex<Vec<u8>>>;

pub fn capture(mut stream: impl Read + Send + 'static) -> Captured {
    let captured = Captured::default();
    let sink = Arc::clone(&captured);
    std::thread::spawn(move || {
        let mut buffer = [0_u8; 8192];
        while let Ok(read) = stream.read(&mut buffer) {
            if read == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&buffer[..read]);
        }
    });
    captured
}

/// The captured text without ANSI escape sequences (text logs are coloured), so that a
/// search cannot be defeated by a colour code in the middle of what it looks for.
pub fn text_of(captured: &Captured) -> String {
    let text = String::from_utf8_lossy(&captured.lock().unwrap_or_else(PoisonError::into_inner))
        .into_owned();
    let mut plain = String::with_capacity(text.len());
    let mut characters = text.chars();
    while let Some(character) = characters.next() {
        if character != '\u{1b}' {
            plain.push(character);
            continue;
        }
        // CSI: ESC [ parameters, ended by a byte in @..~.
        if characters.next() == Some('[') {
            for ending in characters.by_ref() {
                if ('@'..='~').contains(&ending) {
                    break;
                }
            }
        }
    }
    plain
}

/// A running `sessionizer` child; killed (SIGKILL) when dropped while still running, and its
/// output printed when that happens during a failing test.
#[derive(Debug)]
pub struct Sessionizer {
    name: &'static str,
    child: Child,
    stdout: Captured,
    stderr: Captured,
    exit: Option<ExitStatus>,
}

impl Sessionizer {
    pub fn spawn(name: &'static str, args: &[&str], env: &BTreeMap<String, String>) -> Sessionizer {
        let mut child = Command::new(sessionizer_path())
            .args(args)
            // Only the configuration the test chose: nothing inherited from the shell.
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the sessionizer binary");
        let stdout = capture(child.stdout.take().expect("piped stdout"));
        let stderr = capture(child.stderr.take().expect("piped stderr"));
        Sessionizer {
            name,
            child,
            stdout,
            stderr,
            exit: None,
        }
    }

    pub fn run(env: &BTreeMap<String, String>) -> Sessionizer {
        Self::spawn("run", &["run"], env)
    }

    pub fn stdout(&self) -> String {
        text_of(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        text_of(&self.stderr)
    }

    /// Both streams, for searching and for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    pub fn still_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait().expect("query the child") {
            Some(status) => {
                self.exit = Some(status);
                false
            }
            None => true,
        }
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// SIGKILL, as the kernel's OOM killer or a node failure stops a pod: no drain, no
    /// commit. Waits until the process is gone.
    pub fn kill(&mut self) {
        if self.still_running() {
            let _gone = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// The peak resident set size so far (`VmHWM`), or `None` once the process is gone.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The exit status, or `None` when the process still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        while self.still_running() {
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The pipes close with the process; give the readers a moment to take the rest.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.exit
    }

    /// SIGTERM, then asserts a successful exit within the drain deadline plus a margin.
    pub async fn stop(&mut self) {
        if !self.still_running() {
            // Give the pipe readers a moment to take the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "exited on its own ({:?}) before SIGTERM\n{}",
                self.exit,
                self.output()
            );
        }
        self.terminate();
        let exit = self.wait_exit(DRAIN_TIMEOUT + EXIT_MARGIN).await;
        let output = self.output();
        let Some(exit) = exit else {
            panic!(
                "still running {:?} after SIGTERM\n{output}",
                DRAIN_TIMEOUT + EXIT_MARGIN
            );
        };
        assert_eq!(exit.code(), Some(0), "exit after SIGTERM: {exit}\n{output}");
    }
}

impl Drop for Sessionizer {
    fn drop(&mut self) {
        if self.still_running() {
            let _gone = self.child.kill();
            let _reaped = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

/// `GET http://{address}{path}`: status and body, or `None` when nothing answered.
pub async fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{address}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.text().await.ok()?;
    Some((status, body))
}

// ---------------------------------------------------------------------------------------------
// Configuration, topics and traces
// ---------------------------------------------------------------------------------------------

/// A complete, valid configuration in environment variables, as a deployment sets them.
pub fn service_env(
    topics: &ServiceTopics,
    group_id: &str,
    server: &OpenlayerServer,
    api_key: &str,
    http: SocketAddr,
) -> BTreeMap<String, String> {
    let settings = [
        ("SESSIONIZER__KAFKA__BOOTSTRAP_SERVERS", bootstrap()),
        ("SESSIONIZER__KAFKA__GROUP_ID", group_id.to_owned()),
        ("SESSIONIZER__KAFKA__TOPIC", topics.traces.clone()),
        (
            "SESSIONIZER__KAFKA__DEAD_LETTER_TOPIC",
            topics.dead_letters.clone(),
        ),
        (
            "SESSIONIZER__KAFKA__SESSIONS_TOPIC",
            topics.sessions.clone(),
        ),
        (
            "SESSIONIZER__KAFKA__CHANGELOG_TOPIC",
            topics.changelog.clone(),
        ),
        (
            "SESSIONIZER__KAFKA__SESSION_TIMEOUT_MS",
            SESSION_TIMEOUT_MS.to_string(),
        ),
        // Sessions stay open across the restarts of a test.
        ("SESSIONIZER__SESSION__GAP_SECS", "3600".to_owned()),
        ("SESSIONIZER__SESSION__IDLE_CHECK_MS", "200".to_owned()),
        ("SESSIONIZER__BATCH__LINGER_MS", "100".to_owned()),
        (
            "SESSIONIZER__OPENLAYER__INITIAL_BACKOFF_MS",
            "20".to_owned(),
        ),
        ("SESSIONIZER__OPENLAYER__MAX_BACKOFF_MS", "200".to_owned()),
        (
            "SESSIONIZER__OPENLAYER__REQUEST_TIMEOUT_SECS",
            "10".to_owned(),
        ),
        (
            "SESSIONIZER__SHUTDOWN__DRAIN_TIMEOUT_SECS",
            DRAIN_TIMEOUT.as_secs().to_string(),
        ),
        ("SESSIONIZER__HTTP__LISTEN", http.to_string()),
        ("SESSIONIZER__LOG__FILTER", "info".to_owned()),
        ("SESSIONIZER__LOG__FORMAT", "text".to_owned()),
        ("OPENLAYER_API_KEY", api_key.to_owned()),
        ("OPENLAYER_BASE_URL", server.base_url()),
        ("OPENLAYER_INFERENCE_PIPELINE_ID", PIPELINE.to_owned()),
    ];
    settings
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

pub fn set(env: &mut BTreeMap<String, String>, name: &str, value: &str) {
    env.insert(name.to_owned(), value.to_owned());
}

/// What each row's session enrichment must be, from the traces in the order produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedRow {
    pub session_id: String,
    pub turn: i64,
    pub tokens_so_far: i64,
    pub previous_inference_id: Option<String>,
}

#[derive(Debug, Default)]
pub struct Expectations {
    pub rows: HashMap<String, ExpectedRow>,
    /// Per session: turns so far, tokens so far, last inference id.
    pub sessions: HashMap<String, (i64, i64, String)>,
}

impl Expectations {
    pub fn produced(&mut self, event: &TraceEvent) {
        let id = event.inference_id.clone().expect("inference id");
        let session = event.session_id.clone().expect("session id");
        let tokens = event.tokens.unwrap_or(0);
        let (turn, tokens_so_far, previous) = match self.sessions.get(&session) {
            Some((turns, total, last)) => (turns + 1, total + tokens, Some(last.clone())),
            None => (1, tokens, None),
        };
        self.sessions
            .insert(session.clone(), (turn, tokens_so_far, id.clone()));
        self.rows.insert(
            id,
            ExpectedRow {
                session_id: session,
                turn,
                tokens_so_far,
                previous_inference_id: previous,
            },
        );
    }
}

pub fn shipped_ids(server: &OpenlayerServer) -> HashSet<String> {
    inference_ids(&server.rows()).into_iter().collect()
}

pub fn inference_ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|row| row["inferenceId"].as_str().expect("inferenceId").to_owned())
        .collect()
}

/// What the shipped rows say against what was produced.
#[derive(Debug, Default, Clone)]
pub struct Verification {
    /// Distinct traces produced.
    pub num_sent: usize,
    /// Distinct produced traces that reached Openlayer at least once.
    pub num_shipped: usize,
    /// Produced traces that never reached Openlayer.
    pub lost: Vec<String>,
    /// Rows beyond the first for the same inference id.
    pub num_duplicated: usize,
    /// Rows whose session enrichment differs from an uninterrupted run, or that nobody produced.
    pub mismatches: Vec<String>,
}

impl Expectations {
    /// Checks `rows` (every row Openlayer received, duplicates included): each expected trace
    /// shipped, and every copy of it carries exactly the enrichment of an uninterrupted run.
    pub fn verify(&self, rows: &[Value]) -> Verification {
        let mut copies: HashMap<&str, usize> = HashMap::new();
        let mut mismatches = Vec::new();
        for row in rows {
            let Some(id) = row["inferenceId"].as_str() else {
                mismatches.push(format!("row without inferenceId: {row}"));
                continue;
            };
            *copies.entry(id).or_default() += 1;
            let Some(want) = self.rows.get(id) else {
                mismatches.push(format!("{id} was never produced"));
                continue;
            };
            let previous = want
                .previous_inference_id
                .as_deref()
                .map_or(Value::Null, Value::from);
            if row["session_id"] != want.session_id.as_str()
                || row["session_turn"] != want.turn
                || row["session_tokens_so_far"] != want.tokens_so_far
                || row["previous_inference_id"] != previous
            {
                mismatches.push(format!(
                    "{id}: want session {} turn {} tokens so far {} previous {previous}, got \
                     session {} turn {} tokens so far {} previous {}",
                    want.session_id,
                    want.turn,
                    want.tokens_so_far,
                    row["session_id"],
                    row["session_turn"],
                    row["session_tokens_so_far"],
                    row["previous_inference_id"],
                ));
            }
        }
        let mut lost: Vec<String> = self
            .rows
            .keys()
            .filter(|id| !copies.contains_key(id.as_str()))
            .cloned()
            .collect();
        lost.sort();
        Verification {
            num_sent: self.rows.len(),
            num_shipped: self.rows.len() - lost.len(),
            lost,
            num_duplicated: copies.values().map(|count| count - 1).sum(),
            mismatches,
        }
    }
}
