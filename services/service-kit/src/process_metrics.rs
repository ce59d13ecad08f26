//! What describes the process rather than its work: the standard `process_*` metrics (CPU,
//! memory, file descriptors, start time) and `<service>_build_info{version}`, constant 1, so
//! dashboards show CPU, memory, restarts and the versions running during a rollout.

use prometheus::{IntGaugeVec, Opts, Registry};

/// Registers the process metrics and `{service}_build_info` on `registry`. Once per process
/// and registry: in-process test instances each have a registry of their own.
///
/// # Errors
/// When they are already registered on `registry`.
pub fn register(registry: &Registry, service: &str, version: &str) -> prometheus::Result<()> {
    // The collector reads /proc: Linux only, where the services are deployed.
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let build_info = IntGaugeVec::new(
        Opts::new(
            format!("{service}_build_info"),
            "Constant 1, labelled with the version of this build.",
        ),
        &["version"],
    )?;
    build_info.with_label_values(&[version]).set(1);
    registry.register(Box::new(build_info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_process_metrics_and_build_info() {
        let registry = Registry::new();
        register(&registry, "sessionizer", "1.2.3").expect("registered");
        let families = registry.gather();
        let names: Vec<&str> = families.iter().map(|family| family.name()).collect();
        assert!(names.contains(&"sessionizer_build_info"), "{names:?}");
        #[cfg(target_os = "linux")]
        for expected in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        let build_info = families
            .iter()
            .find(|family| family.name() == "sessionizer_build_info")
            .expect("build info");
        let metric = &build_info.get_metric()[0];
        assert_eq!(metric.get_gauge().get_value(), 1.0);
        assert_eq!(metric.get_label()[0].name(), "version");
        assert_eq!(metric.get_label()[0].value(), "1.2.3");
    }

    #[test]
    fn a_second_registration_on_one_registry_is_refused() {
        let registry = Registry::new();
        register(&registry, "gateway", "1").expect("first");
        assert!(register(&registry, "gateway", "1").is_err());
    }
}
