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
use crate::workspace;
use crate::{ServiceTopics, create_topic, read_topic, unique_name};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::{AbortHandle, JoinHandle};

pub async fn run(size: Size) -> Outcome {
    let mut outcome = Outcome::new("broker_restart");
    let outage = size.pick(Duration::from_secs(10), Duration::from_secs(30));
    let plan = Plan {
        prefix: "restart".to_owned(),
        num_sessions: size.pick(100, 1000),
        num_turns: size.pick(20, 30),
        traces_per_sec: size.pick(100.0, 400.0),
        mixed: false,
        end_sessions: false,
    };
    outcome.note(format!(
        "{} traces; the broker (S3 storage) stopped for {} s mid-stream",
        plan.num_traces(),
        outage.as_secs()
    ));
    let storage = S3Store::start().await;
    let mut broker = Broker::start(&storage, free_local_address());
    let scene = scene_on(&broker, "restart").await;
    let bootstrap = broker.bootstrap();
    let feed = Feed::start(&bootstrap, &scene.topics.traces, plan);
    // Repartitioning off here: its markers move the partitions' positions every second, so
    // the changelog is written every checkpoint interval even when no trace comes, and this
    // test broker loses a record being written when it stops (a restore then waits on the
    // hole for good). Without them the changelog goes quiet once the feed holds.
    let mut env = scene.env.clone();
    set(&mut env, "SESSIONIZER__KAFKA__REPARTITION_TOPIC", "");
    let mut instance = Instance::start(&env);
    let server = &scene.server;
    let ready = wait_until(Duration::from_secs(60), async || {
        instance.sample(server).await;
        instance.readiness().await == Some(200) && server.num_rows() > 0
    })
    .await;
    outcome.check(ready, || {
        "not ready and shipping before the broker stopped".to_owned()
    });

    // The feed holds through the outage: the test broker forgets idempotent producers when it
    // restarts, which producers with messages in flight take as fatal. The sessionizer still
    // rides out the restart with work in hand, and the feed's backlog follows it.
    feed.pause().await;
    // What was fed is shipped and its last checkpoint written before the broker stops (see
    // above): the outage meets no changelog write in flight.
    let fed = feed.num_produced();
    wait_until(Duration::from_secs(60), async || {
        instance.sample(server).await;
        server.num_rows() >= fed
    })
    .await;
    tokio::time::sleep(scene.checkpoint_interval * 4).await;
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
    feed.resume();
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
    let outage = size.pick(Duration::from_secs(5), Duration::from_secs(30));
    let plan = Plan {
        prefix: "restint".to_owned(),
        num_sessions: size.pick(100, 500),
        num_turns: size.pick(20, 30),
        traces_per_sec: size.pick(100.0, 300.0),
        mixed: false,
        end_sessions: false,
    };
    outcome.note(format!(
        "{} traces; an instance killed, and the broker (S3 storage) stopped for {} s as its \
         successor began restoring",
        plan.num_traces(),
        outage.as_secs()
    ));
    let storage = S3Store::start().await;
    // Clients reach the broker through a proxy that can drop them all at once.
    let listen = free_local_address();
    let cutter = Cutter::start(listen).await;
    let mut broker = Broker::start_behind(&storage, listen, cutter.address);
    let scene = scene_on(&broker, "restint").await;
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
    // A request the dead instance had fully sent may still be answered and recorded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    outcome.duplicate_bound += first.rows_in_flight(server.num_rows(), scene.checkpoint_interval);
    outcome.keep_logs(&first.process);
    // The feed holds through the outage (see `run`).
    feed.pause().await;

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
    // broker is cut off then, before the first changelog fetch on its slow storage is back,
    // restarted, and reachable again after the outage.
    let watch_until = Instant::now() + Duration::from_secs(60);
    let mut assigned = false;
    while !assigned && Instant::now() < watch_until {
        assigned = assigned_partitions(&second.process.stdout());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cutter.cut();
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
    broker.stop();
    let mut not_ready_seen = false;
    let outage_ends = Instant::now() + outage;
    while Instant::now() < outage_ends {
        not_ready_seen |= matches!(second.readiness().await, Some(status) if status != 200);
        second.sample(server).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let restarted_at = Instant::now();
    broker = Broker::start_behind(&storage, listen, cutter.address);
    cutter.reopen();
    feed.resume();
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
    // An outage longer than the group session timeout (6 s here) drops the member: its
    // interrupted restore is abandoned with the revoked partitions and begun anew after the
    // rejoin, so no retry is needed here; the retry policy has its own property tests.
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

/// The scenario's topics on `broker`, and the scene pointed at it.
async fn scene_on(broker: &Broker, name: &str) -> Scene {
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
    scene
}

/// A TCP proxy in front of the broker that drops every connection at once and refuses new
/// ones while cut, as when a broker vanishes from the network; the broker process itself
/// can then be restarted without the test broker's own shutdown delay.
struct Cutter {
    address: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accepting: JoinHandle<()>,
}

impl Cutter {
    async fn start(upstream: SocketAddr) -> Cutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepting = tokio::spawn({
            let (open, connections) = (Arc::clone(&open), Arc::clone(&connections));
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _closed =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    lock(&connections).push(relay.abort_handle());
                }
            }
        });
        Cutter {
            address,
            open,
            connections,
            accepting,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for relay in lock(&self.connections).drain(..) {
            relay.abort();
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    // The service is held to what the broker kept: every trace in the topic shipped, with the
    // enrichment an uninterrupted run over the topic gives. The read returns once it has
    // every record; its bound is generous because this broker's S3 storage reads slowly
    // after a restart (a 20 s bound read only part of the topic, which looked like records
    // lost by the broker).
    let mut stored = read_topic(
        &bootstrap,
        &scene.topics.traces,
        4,
        fed.expected.rows.len(),
        size.pick(Duration::from_secs(120), Duration::from_secs(600)),
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
    /// Where clients are told to connect (a proxy in front, or `address` itself).
    advertised: SocketAddr,
}

impl Broker {
    pub fn start(storage: &S3Store, address: SocketAddr) -> Broker {
        Broker::start_behind(storage, address, address)
    }

    /// A broker listening on `address` that tells clients to connect to `advertised`.
    pub fn start_behind(storage: &S3Store, address: SocketAddr, advertised: SocketAddr) -> Broker {
        let cache = std::env::var_os("KAFKA_BROKER_CACHE")
            .map_or_else(|| workspace().join(".cache/kafka-broker"), PathBuf::from);
        let tansu = cache.join("bin/tansu");
        assert!(
            tansu.is_file(),
            "{} is missing: run `scripts/kafka-broker.sh up` once (make test does)",
            tansu.display()
        );
        let url = format!("tcp://{address}");
        let advertised_url = format!("tcp://{advertised}");
        let process = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
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
        Broker {
            process,
            address,
            advertised,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.advertised.to_string()
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }
}
