//! Broker restart: the broker is stopped mid-stream and started again on the same port and
//! storage. The service reconnects by itself, `/readyz` reflects the outage, nothing is lost.
//!
//! The shared test broker keeps its data in memory and would come back empty, so this scenario
//! runs its own broker on S3-compatible storage served by `moto_server` (installed by
//! `scripts/python-venv.sh moto`), which survives a broker restart.

use super::feed::{Feed, Plan};
use super::probe::{Instance, sum, wait_until};
use super::{Outcome, Scene, Size};
use crate::service::{Expectations, free_local_address, set};
use crate::{ServiceTopics, create_topic, read_topic, unique_name};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub async fn run(size: Size) -> Outcome {
    let mut outcome = Outcome::new("broker_restart");
    let outage = size.pick(Duration::from_secs(10), Duration::from_secs(30));
    let plan = Plan {
        prefix: "restart".to_owned(),
        num_sessions: size.pick(100, 1000),
        num_turns: size.pick(20, 30),
        traces_per_sec: size.pick(100.0, 400.0),
    };
    outcome.note(format!(
        "{} traces; the broker (S3 storage) stopped for {} s mid-stream",
        plan.num_traces(),
        outage.as_secs()
    ));
    let (storage, mut broker, scene) = s3_scene("restart").await;
    let bootstrap = broker.bootstrap();
    let feed = Feed::start(&bootstrap, &scene.topics.traces, plan);
    let mut instance = Instance::start(&scene.env);
    let server = &scene.server;
    let ready = wait_until(Duration::from_secs(60), async || {
        instance.sample(server).await;
        instance.readiness().await == Some(200) && server.num_rows() > 0
    })
    .await;
    outcome.check(ready, || {
        "not ready and shipping before the broker stopped".to_owned()
    });

    broker.stop();
    let mut not_ready_seen = false;
    let outage_ends = Instant::now() + outage;
    while Instant::now() < outage_ends {
        not_ready_seen |= matches!(instance.readiness().await, Some(status) if status != 200);
        instance.sample(&scene.server).await;
        outcome.observe_rss(instance.process.peak_rss_bytes());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    outcome.check(not_ready_seen, || {
        "/readyz stayed 200 while the broker was down".to_owned()
    });
    let restarted_at = Instant::now();
    broker = Broker::start(&storage, broker.address);
    let ready_again = wait_until(Duration::from_secs(120), async || {
        instance.sample(server).await;
        instance.readiness().await == Some(200)
    })
    .await;
    // With the broker gone longer than the group session timeout (6 s here, 45 s by default),
    // the group drops the instance: it gives up its partitions and restores them from the
    // last checkpoint it could write before the outage, so what it shipped since may repeat.
    outcome.duplicate_bound +=
        instance.rows_in_flight(server.num_rows(), scene.checkpoint_interval);
    outcome.check(ready_again, || {
        "/readyz did not return to 200 after the restart".to_owned()
    });
    outcome.note(format!(
        "ready again {:.1} s after the broker restarted; /readyz said not ready during the outage: {not_ready_seen}",
        restarted_at.elapsed().as_secs_f64()
    ));

    settle(outcome, &scene, feed, broker, instance, size).await
}

/// The broker stops while a restore is in progress: an instance is killed mid-stream, its
/// successor is assigned the partitions and starts reading their state back, and the broker
/// stops right then. The successor waits the outage out (unready, not exiting), finishes the
/// restore and ships everything with the enrichment of an uninterrupted run.
pub async fn run_during_restore(size: Size) -> Outcome {
    let mut outcome = Outcome::new("restore_interrupted");
    let outage = size.pick(Duration::from_secs(5), Duration::from_secs(20));
    let plan = Plan {
        prefix: "restint".to_owned(),
        num_sessions: size.pick(100, 500),
        num_turns: size.pick(20, 30),
        traces_per_sec: size.pick(100.0, 300.0),
    };
    outcome.note(format!(
        "{} traces; an instance killed, and the broker (S3 storage) stopped for {} s as its \
         successor began restoring",
        plan.num_traces(),
        outage.as_secs()
    ));
    let (storage, mut broker, scene) = s3_scene("restint").await;
    let bootstrap = broker.bootstrap();
    let feed = Feed::start(&bootstrap, &scene.topics.traces, plan.clone());
    let server = &scene.server;
    let mut first = Instance::start(&scene.env);
    // Far enough in that the changelog holds state worth reading back.
    let shipping = wait_until(Duration::from_secs(120), async || {
        first.sample(server).await;
        server.num_rows() >= plan.num_traces() / 4
    })
    .await;
    outcome.check(shipping, || "the first instance did not ship".to_owned());
    first.process.kill();
    outcome.duplicate_bound += first.rows_in_flight(server.num_rows(), scene.checkpoint_interval);
    outcome.keep_logs(&first.process);

    // Its assignment log line is the cue to kill the broker.
    let mut env = scene.env.clone();
    let filter = format!(
        "{},sessionizer::source::kafka=info",
        env.get("SESSIONIZER__LOG__FILTER")
            .map_or("warn", String::as_str)
    );
    set(&mut env, "SESSIONIZER__LOG__FILTER", &filter);
    let mut second = Instance::start(&env);
    // The restore starts as the assignment is applied, right after the consumer logs it: the
    // broker freezes then, before the first changelog fetch on its slow storage is back, and
    // restarts after the outage.
    let watch_until = Instant::now() + Duration::from_secs(60);
    let mut assigned = false;
    while !assigned && Instant::now() < watch_until {
        assigned = assigned_partitions(&second.process.stdout());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.freeze();
    let restored_before_stop = match second.metrics().await {
        Some(metrics) => sum(
            &metrics,
            "sessionizer_restore_attempts_total{outcome=\"restored\"",
        ),
        None => f64::NAN,
    };
    let assignment_lines: Vec<String> = second
        .process
        .output()
        .lines()
        .filter(|line| line.contains("assigned"))
        .map(str::to_owned)
        .collect();
    outcome.check(assigned && restored_before_stop == 0.0, || {
        format!(
            "the broker did not stop during a restore (assigned: {assigned}, partitions \
             restored before the stop: {restored_before_stop}): {assignment_lines:?}"
        )
    });
    let mut not_ready_seen = false;
    let outage_ends = Instant::now() + outage;
    while Instant::now() < outage_ends {
        not_ready_seen |= matches!(second.readiness().await, Some(status) if status != 200);
        second.sample(server).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Thawed before the orderly stop: a broker stopped while frozen lost most of what it
    // had acknowledged (a defect of the test broker, which the service cannot make up for).
    broker.thaw();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.stop();
    let restarted_at = Instant::now();
    broker = Broker::start(&storage, broker.address);
    let ready_again = wait_until(Duration::from_secs(180), async || {
        second.sample(server).await;
        second.readiness().await == Some(200)
    })
    .await;
    outcome.check(ready_again, || {
        "/readyz did not turn 200 after the broker came back".to_owned()
    });
    let restored = wait_until(Duration::from_secs(120), async || {
        second
            .metrics()
            .await
            .is_some_and(|metrics| count(&metrics, "restored") > 0)
    })
    .await;
    outcome.check(restored, || {
        "no partition's state was restored after the broker came back".to_owned()
    });
    let attempts = second.metrics().await.unwrap_or_default();
    outcome.note(format!(
        "ready {:.1} s after the broker restarted (not ready seen during the outage: \
         {not_ready_seen}); restore attempts: {} restored, {} retried, {} failed",
        restarted_at.elapsed().as_secs_f64(),
        count(&attempts, "restored"),
        count(&attempts, "retried"),
        count(&attempts, "failed"),
    ));
    outcome.duplicate_bound += second.rows_in_flight(server.num_rows(), scene.checkpoint_interval);
    settle(outcome, &scene, feed, broker, second, size).await
}

/// Restore attempts with `outcome`, summed over partitions.
fn count(metrics: &str, outcome: &str) -> u64 {
    let series = format!("sessionizer_restore_attempts_total{{outcome=\"{outcome}\"");
    // Whole numbers; `abs` drops the sign of an empty sum's -0.0.
    sum(metrics, &series).round().abs() as u64
}

/// Whether a `partitions assigned` log line names at least one partition.
fn assigned_partitions(stdout: &str) -> bool {
    stdout
        .lines()
        .filter(|line| line.contains("partitions assigned"))
        .any(|line| {
            line.split_once("partitions=[")
                .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// A broker on S3 storage (it survives restarts) with the scenario's topics, and the scene
/// pointed at it.
async fn s3_scene(name: &str) -> (S3Store, Broker, Scene) {
    let storage = S3Store::start().await;
    let broker = Broker::start(&storage, free_local_address());
    let bootstrap = broker.bootstrap();
    let topics = ServiceTopics {
        traces: unique_name(&format!("rel-{name}-traces")),
        dead_letters: unique_name(&format!("rel-{name}-dlq")),
        sessions: unique_name(&format!("rel-{name}-sessions")),
        changelog: unique_name(&format!("rel-{name}-state")),
    };
    create_topic(&bootstrap, &topics.traces, 4).await;
    create_topic(&bootstrap, &topics.dead_letters, 1).await;
    create_topic(&bootstrap, &topics.sessions, 1).await;
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let mut scene = Scene::with_topics(topics, &api_key).await;
    set(
        &mut scene.env,
        "SESSIONIZER__KAFKA__BOOTSTRAP_SERVERS",
        &bootstrap,
    );
    (storage, broker, scene)
}

/// After the outage: every trace the broker kept shipped exactly as an uninterrupted run
/// would have, the instance still running, nothing dead-lettered.
async fn settle(
    mut outcome: Outcome,
    scene: &Scene,
    feed: Feed,
    broker: Broker,
    mut instance: Instance,
    size: Size,
) -> Outcome {
    let bootstrap = broker.bootstrap();
    let fed = feed.finish().await;
    outcome.check(fed.num_failed == 0, || {
        format!("{} traces not acknowledged by Kafka", fed.num_failed)
    });
    // The test broker on S3 storage has been seen to lose records it acknowledged just
    // before it was stopped (a broker defect, counted here). The service is held to what the
    // broker kept: every trace in the topic shipped, with the enrichment an uninterrupted run
    // over the topic gives.
    let mut stored = read_topic(
        &bootstrap,
        &scene.topics.traces,
        4,
        fed.expected.rows.len(),
        Duration::from_secs(20),
    );
    stored.sort_by_key(|record| (record.partition, record.offset));
    let decoder = trace_model::Decoder::new(trace_model::Limits::default());
    let mut kept = Expectations::default();
    for record in &stored {
        match decoder.decode(&record.payload) {
            Ok(event) => kept.produced(&event),
            Err(error) => outcome
                .failures
                .push(format!("an undecodable trace in the topic: {error}")),
        }
    }
    let num_lost_by_broker = fed
        .expected
        .rows
        .keys()
        .filter(|id| !kept.rows.contains_key(*id))
        .count();
    outcome.note(format!(
        "the broker kept {} of the {} traces it acknowledged ({num_lost_by_broker} lost by the \
         test broker across its restart; the service is checked against what it kept)",
        kept.rows.len(),
        fed.expected.rows.len()
    ));
    let all_shipped = scene
        .wait_all_shipped(
            &kept,
            size.pick(Duration::from_secs(120), Duration::from_secs(600)),
        )
        .await;
    outcome.check(all_shipped, || "not every trace shipped in time".to_owned());
    outcome.observe_rss(instance.process.peak_rss_bytes());
    if instance.process.still_running() {
        instance.process.stop().await;
    } else {
        outcome
            .failures
            .push("the service exited on its own".to_owned());
    }
    outcome.keep_logs(&instance.process);
    let letters = read_topic(
        &bootstrap,
        &scene.topics.dead_letters,
        1,
        1,
        Duration::from_secs(3),
    );
    outcome.num_dead_lettered = letters.len();
    outcome.check(letters.is_empty(), || {
        "good traces were dead-lettered".to_owned()
    });
    outcome.take_verification(&kept.verify(&scene.server.rows()));
    drop(broker);
    outcome
}

/// A child process killed when dropped.
#[derive(Debug)]
struct Owned(Option<Child>);

impl Owned {
    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SIGTERM, as the broker would get from an orderly stop.
            let _sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }

    fn alive(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// `moto_server` with the bucket the broker writes to.
#[derive(Debug)]
pub struct S3Store {
    _process: Owned,
    endpoint: String,
}

impl S3Store {
    pub async fn start() -> S3Store {
        let venv = Command::new(workspace().join("scripts/python-venv.sh"))
            .arg("moto")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/python-venv.sh moto");
        assert!(venv.status.success(), "scripts/python-venv.sh moto failed");
        let bin = PathBuf::from(String::from_utf8_lossy(&venv.stdout).trim());
        let address = free_local_address();
        let process = Command::new(bin.join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &address.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let mut process = Owned(Some(process));
        let endpoint = format!("http://{address}");
        let client = reqwest::Client::new();
        let bucket = format!("{endpoint}/tansu");
        let created = wait_until(Duration::from_secs(60), async || {
            client
                .put(&bucket)
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
        })
        .await;
        assert!(
            created && process.alive(),
            "moto_server did not start or refused the bucket"
        );
        S3Store {
            _process: process,
            endpoint,
        }
    }
}

/// A Tansu broker on S3 storage: the binary `scripts/kafka-broker.sh` installed.
#[derive(Debug)]
pub struct Broker {
    process: Owned,
    pub address: SocketAddr,
}

impl Broker {
    pub fn start(storage: &S3Store, address: SocketAddr) -> Broker {
        let cache = std::env::var_os("KAFKA_BROKER_CACHE")
            .map_or_else(|| workspace().join(".cache/kafka-broker"), PathBuf::from);
        let tansu = cache.join("bin/tansu");
        assert!(
            tansu.is_file(),
            "{} is missing: run `scripts/kafka-broker.sh up` once (make test does)",
            tansu.display()
        );
        let url = format!("tcp://{address}");
        let process = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "s3://tansu/"])
            .env("AWS_ENDPOINT", &storage.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let mut process = Owned(Some(process));
        // The port accepts within tens of milliseconds; a tansu that lost the port race exits.
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < until,
                "the broker did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            process.alive(),
            "the broker exited at start (port {address} taken?)"
        );
        Broker { process, address }
    }

    pub fn bootstrap(&self) -> String {
        self.address.to_string()
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// SIGSTOP: the broker stops answering at once (a SIGTERM'd broker on S3 takes a second
    /// or two to go, and a SIGKILL'd one loses records it had served).
    pub fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a frozen broker goes on.
    pub fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = self.process.0.as_ref() {
            let _sent = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }
}
