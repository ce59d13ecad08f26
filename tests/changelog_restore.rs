//! Reading session state back from the changelog across broker restarts, on the test broker
//! with S3-compatible storage (it survives a restart; `scripts/python-venv.sh moto`).
//!
//! This broker answers a fetch empty when its storage read outlasts the fetch's wait, which is
//! how a restore with a 50 ms wait stalled for good after the broker restarted (a full
//! `broker_restart` run failed on it). Each case reads every record back, or fails the test.

use end_to_end::reliability::broker_restart::{Broker, S3Store};
use end_to_end::service::free_local_address;
use end_to_end::{create_topic, unique_name};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use sessionizer::config::SessionizerConfig;
use sessionizer::secret::Secret;
use sessionizer::source::changelog::{FailureKind, read_partitions};
use sessionizer::source::kafka::KafkaSettings;
use sessionizer::source::restore::STALL_TIMEOUT;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Checkpoint records per partition: enough for many fetches on the slow storage.
const NUM_RECORDS: i64 = 200;
const PARTITIONS: [i32; 2] = [0, 1];

/// The service's `[kafka]` settings with this broker and changelog, validated as the service
/// validates them; the restore reads only the changelog.
fn settings(bootstrap: &str, changelog: &str) -> KafkaSettings {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = bootstrap.to_owned();
    config.kafka.group_id = unique_name("restore-group");
    config.kafka.changelog_topic = changelog.to_owned();
    config.kafka.sessions_topic = String::new();
    // Validation asks for a key; nothing is shipped here.
    config.openlayer.api_key = Some(Secret::new("unused"));
    config.validate().expect("valid configuration").kafka
}

/// Checkpoints 0..NUM_RECORDS in each partition, in small batches like the service's.
async fn fill(bootstrap: &str, changelog: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for w in 0..NUM_RECORDS {
        let value = format!("{{\"w\":{w},\"event_time_ms\":{w}}}");
        for partition in PARTITIONS {
            let record = rdkafka::producer::FutureRecord::to(changelog)
                .key("checkpoint")
                .payload(value.as_bytes())
                .partition(partition);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("delivered");
        }
    }
}

/// Reads both partitions back; the newest checkpoint of each must be the last one written.
fn assert_restores_everything(settings: &KafkaSettings, changelog: &str, case: &str) {
    let read = read_partitions(
        settings,
        changelog,
        &PARTITIONS,
        STALL_TIMEOUT,
        &AtomicBool::new(false),
    )
    .unwrap_or_else(|error| panic!("{case}: {error} ({:?})", error.kind()));
    for partition in PARTITIONS {
        let checkpoint = read.partitions[&partition]
            .checkpoint
            .as_ref()
            .expect("a checkpoint");
        assert_eq!(
            checkpoint.w,
            NUM_RECORDS - 1,
            "{case}: partition {partition}"
        );
        assert_eq!(
            read.num_records[&partition],
            u64::try_from(NUM_RECORDS).expect("positive"),
            "{case}: partition {partition}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_read_everything_across_broker_restarts() {
    let storage = S3Store::start().await;
    let mut broker = Broker::start(&storage, free_local_address());
    let address = broker.address;
    let bootstrap = broker.bootstrap();
    let changelog = unique_name("restore-state");
    create_topic(&bootstrap, &changelog, 2).await;
    fill(&bootstrap, &changelog).await;
    let settings = settings(&bootstrap, &changelog);

    // Slow storage, no restart: many fetches come back empty or short.
    tokio::task::block_in_place(|| assert_restores_everything(&settings, &changelog, "steady"));

    // Right after a restart, as when the group reassigns partitions once the broker is back.
    broker.stop();
    broker = Broker::start(&storage, address);
    tokio::task::block_in_place(|| {
        assert_restores_everything(&settings, &changelog, "after a restart");
    });

    // Begun while the broker is down: the read waits for it instead of failing at once.
    broker.stop();
    let reading = {
        let (settings, changelog) = (settings.clone(), changelog.clone());
        std::thread::spawn(move || {
            assert_restores_everything(&settings, &changelog, "begun while down");
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker = Broker::start(&storage, address);
    reading.join().expect("begun while down");

    // The broker restarts in the middle of a read.
    let reading = {
        let (settings, changelog) = (settings.clone(), changelog.clone());
        std::thread::spawn(move || {
            assert_restores_everything(&settings, &changelog, "restarted mid-read");
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker = Broker::start(&storage, address);
    reading.join().expect("restarted mid-read");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_changelog_is_reported_as_missing_not_waited_for() {
    let storage = S3Store::start().await;
    let broker = Broker::start(&storage, free_local_address());
    let settings = settings(&broker.bootstrap(), "never-created");
    let error = tokio::task::block_in_place(|| {
        read_partitions(
            &settings,
            "never-created",
            &[0],
            Duration::from_secs(5),
            &AtomicBool::new(false),
        )
    })
    .expect_err("no such topic");
    assert_eq!(error.kind(), FailureKind::Missing, "{error}");
    assert_eq!(
        error.to_string(),
        "changelog topic `never-created` partition 0 does not exist"
    );
}
