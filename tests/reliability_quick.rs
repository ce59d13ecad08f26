//! The reliability suite at its quick size, one test per scenario, so `make test` keeps every
//! scenario working; `make reliability` runs the full sizes and prints the report.
//!
//! The scenarios run one at a time: each starts and kills service instances and measures
//! what they did, which other scenarios on the same two cores would blur.

use end_to_end::reliability::{self, Report, Size};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn passes(name: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let outcome = reliability::run(name, Size::Quick).await;
    let report = Report {
        outcomes: vec![outcome],
    };
    println!("{}", report.table());
    let outcome = &report.outcomes[0];
    assert!(
        outcome.passed(),
        "{name} failed:\n{}\n{}",
        report.table(),
        outcome.logs.join("\n---\n")
    );
    assert!(outcome.num_sent > 0 && outcome.num_lost == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_nothing_and_keeps_enrichment_exact() {
    passes("crash_loop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_one_to_three_to_one_loses_nothing_and_splits_no_session() {
    passes("rebalance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_is_ridden_out_without_loss() {
    passes("broker_restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stop_during_a_restore_is_waited_out_with_exact_state() {
    passes("restore_interrupted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openlayer_outage_and_rate_limit_storm_lose_nothing() {
    passes("openlayer_outage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_reasons_and_good_input_flows() {
    passes("bad_input").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_restarts_ship_nothing_twice() {
    passes("graceful_shutdown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_stays_secret_and_only_the_documented_endpoints_answer() {
    passes("security").await;
}
