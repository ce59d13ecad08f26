//! Where the demo's rows go: the real Openlayer when `OPENLAYER_API_KEY` and
//! `OPENLAYER_INFERENCE_PIPELINE_ID` are set, else a local Openlayer-compatible endpoint (the
//! one the tests run against) that records every accepted request in `requests.jsonl`.

use anyhow::Context as _;
use fakes::openlayer::{OpenlayerServer, Options};
use std::path::{Path, PathBuf};

/// The key the demo's sessionizer sends to the local endpoint.
const DEMO_KEY: &str = "demo-key";
/// The pipeline id the local endpoint is sent.
const DEMO_PIPELINE: &str = "demo-pipeline";
/// The sessions pipeline id the local endpoint is sent one row per closed session.
const DEMO_SESSIONS_PIPELINE: &str = "demo-sessions";
/// Names the sessions pipeline when shipping to the real Openlayer (as for the service).
const SESSIONS_PIPELINE_VAR: &str = "SESSIONIZER__OPENLAYER__SESSIONS_PIPELINE_ID";
const OPENLAYER_BASE_URL: &str = "https://api.openlayer.com/v1";

/// Where rows go, with what the service needs to send them there.
#[derive(Debug)]
pub struct Destination {
    base_url: String,
    api_key: String,
    pipeline_id: String,
    /// `None`: no session rows (a real account without a sessions pipeline named).
    sessions_pipeline_id: Option<String>,
    /// `None` when shipping to the real Openlayer.
    local: Option<LocalEndpoint>,
}

/// The local endpoint and the file it records requests in.
#[derive(Debug)]
struct LocalEndpoint {
    server: OpenlayerServer,
    requests_file: PathBuf,
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

impl Destination {
    /// The real Openlayer when the SDK's variables name an account, else a local endpoint
    /// recording into `output_dir`.
    ///
    /// # Errors
    /// When the local endpoint cannot start.
    pub async fn choose(output_dir: &Path) -> anyhow::Result<Self> {
        let account = non_empty_var("OPENLAYER_API_KEY")
            .zip(non_empty_var("OPENLAYER_INFERENCE_PIPELINE_ID"));
        if let Some((api_key, pipeline_id)) = account {
            let base_url = non_empty_var("OPENLAYER_BASE_URL")
                .unwrap_or_else(|| OPENLAYER_BASE_URL.to_owned());
            let sessions_pipeline_id = non_empty_var(SESSIONS_PIPELINE_VAR);
            return Ok(Destination {
                base_url: base_url.trim_end_matches('/').to_owned(),
                api_key,
                pipeline_id,
                sessions_pipeline_id,
                local: None,
            });
        }
        let requests_file = output_dir.join("requests.jsonl");
        let options = Options {
            journal: Some(requests_file.clone()),
            ..Options::new(DEMO_KEY)
        };
        let server = OpenlayerServer::try_start(options)
            .await
            .context("starting the local Openlayer-compatible endpoint")?;
        let local = LocalEndpoint {
            server,
            requests_file,
        };
        Ok(Destination {
            base_url: local.server.base_url(),
            api_key: DEMO_KEY.to_owned(),
            pipeline_id: DEMO_PIPELINE.to_owned(),
            sessions_pipeline_id: Some(DEMO_SESSIONS_PIPELINE.to_owned()),
            local: Some(local),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    pub fn pipeline_id(&self) -> &str {
        &self.pipeline_id
    }

    pub fn sessions_pipeline_id(&self) -> Option<&str> {
        self.sessions_pipeline_id.as_deref()
    }

    /// Says where rows are going, before the traffic starts.
    pub fn announce(&self) {
        match &self.local {
            Some(local) => println!(
                "recording what would be sent to Openlayer in {}",
                local.requests_file.display()
            ),
            None => println!(
                "shipping to Openlayer at {}, pipeline {}, sessions pipeline {}",
                self.base_url,
                self.pipeline_id,
                self.sessions_pipeline_id
                    .clone()
                    .unwrap_or_else(|| format!("none (set {SESSIONS_PIPELINE_VAR})"))
            ),
        }
    }

    /// The report's line on the recorded requests; `None` for the real Openlayer.
    pub fn recorded(&self) -> Option<String> {
        let local = self.local.as_ref()?;
        Some(format!(
            "requests recorded ({} rows): {}",
            local.server.num_rows(),
            local.requests_file.display()
        ))
    }
}
