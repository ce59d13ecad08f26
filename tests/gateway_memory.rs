//! The gateway's memory under many large requests at once: 64 clients each upload a body of
//! the maximum size (4 MiB) slowly, all at the same time. The gateway holds at most
//! `http.max_body_bytes_in_flight` body bytes and answers the rest 503 before reading them,
//! so its resident memory grows by a bounded amount however many clients come.
//!
//! Its own test binary: the process's peak resident memory (`VmHWM`, reset through
//! `/proc/self/clear_refs`) is then the gateway's and this client's, whose buffers are small.

use end_to_end::gateway::{CLIENT_KEY, Gateway};
use end_to_end::{bootstrap, create_topic, unique_name};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const CLIENTS: usize = 64;
const MAX_BODY: usize = 4 * 1024 * 1024;
/// What the gateway may hold: four maximum-size bodies.
const IN_FLIGHT: usize = 4 * MAX_BODY;
/// The stated bound on the growth of resident memory: the bodies held, their growing buffers,
/// their parsed copies and the allocator's slack (measured: about 70 MiB). Without the bound
/// on body bytes the same run grew by about 350 MiB.
const GROWTH_BOUND: usize = 8 * IN_FLIGHT;
const CHUNK: usize = 64 * 1024;

/// `/proc/self/status` field `name`, in bytes.
fn status_bytes(name: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in /proc/self/status"));
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

/// Uploads one data-stream body of `MAX_BODY` bytes in chunks (chunked encoding, as a client
/// that does not know its length sends), slowly; returns the HTTP status, or `None` when the
/// connection was closed before an answer.
async fn upload(address: std::net::SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let head = format!(
        "POST /v1/inference-pipelines/memory/data-stream HTTP/1.1\r\nHost: gateway\r\n\
         Authorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let prefix = br#"{"config": {"outputColumnName": "output"}, "rows": [{"output": ""#;
    let suffix = br#""}]}"#;
    let padding = MAX_BODY - prefix.len() - suffix.len();
    let chunk = vec![b'x'; CHUNK];
    let mut write = async || -> std::io::Result<()> {
        stream.write_all(head.as_bytes()).await?;
        let mut send = async |bytes: &[u8]| -> std::io::Result<()> {
            stream
                .write_all(format!("{:x}\r\n", bytes.len()).as_bytes())
                .await?;
            stream.write_all(bytes).await?;
            stream.write_all(b"\r\n").await
        };
        send(prefix).await?;
        let mut left = padding;
        while left > 0 {
            let size = left.min(CHUNK);
            send(&chunk[..size]).await?;
            left -= size;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        send(suffix).await?;
        stream.write_all(b"0\r\n\r\n").await
    };
    // A refused upload meets a closed connection: its answer may still be readable.
    let _written = write().await;
    let mut answer = Vec::new();
    let _read =
        tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_requests_at_once_hold_bounded_memory() {
    let topic = unique_name("gw-memory");
    create_topic(&bootstrap(), &topic, 1).await;
    let gateway = Gateway::start(
        &bootstrap(),
        &topic,
        &[
            ("GATEWAY__HTTP__MAX_BODY_BYTES", &MAX_BODY.to_string()),
            (
                "GATEWAY__HTTP__MAX_BODY_BYTES_IN_FLIGHT",
                &IN_FLIGHT.to_string(),
            ),
        ],
    )
    .await;
    // The peak from here on.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident memory");
    let before = status_bytes("VmRSS:");

    let uploads: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(upload(gateway.listen)))
        .collect();
    let mut statuses = Vec::new();
    for upload in uploads {
        statuses.push(upload.await.expect("joined"));
    }
    let peak = status_bytes("VmHWM:");
    let growth = peak.saturating_sub(before);
    let count = |status: u16| {
        statuses
            .iter()
            .filter(|seen| **seen == Some(status))
            .count()
    };
    eprintln!(
        "resident memory grew by {} MiB (bound {} MiB); {} uploads read, {} shed, {} cut",
        growth >> 20,
        GROWTH_BOUND >> 20,
        count(413),
        count(503),
        statuses.iter().filter(|status| status.is_none()).count()
    );
    assert!(
        growth < GROWTH_BOUND,
        "resident memory grew by {} MiB under {CLIENTS} concurrent 4 MiB uploads, more than \
         the bound of {} MiB ({} read, {} shed)",
        growth >> 20,
        GROWTH_BOUND >> 20,
        count(413),
        count(503)
    );
    // A body read whole is refused for its row (over the 1 MiB message limit): 413. A shed
    // upload's 503 may be lost to the connection reset that cuts its body short: the count
    // is the gateway's.
    assert!(count(413) >= 1, "some uploads were read: {statuses:?}");
    assert!(
        gateway.metric("gateway_requests_shed_total", "").await >= 1.0,
        "some were shed: {statuses:?}"
    );
    gateway.stop().await;
}
