//! The Schema Registry client against a local Confluent-compatible server: ids are registered
//! and fetched once per process, failures map to the right decode errors, writer schemas
//! other than ours decode through schema resolution, and credentials (basic or bearer) go
//! with every request, a refusal being a permanent, clearly worded error.

mod support;

use axum::http::StatusCode;
use fakes::schema_registry::{REGISTRY_CONTENT_TYPE, RegistryServer, RequiredAuth, SeenHeaders};
use std::time::{Duration, Instant};
use support::fixtures::{V1_AVSC, confluent, full_trace, v1_datum, v1_full_trace};
use support::registry::client_of;
use trace_model::codec::avro;
use trace_model::codec::registry::{RegistryAuth, RegistryEndpoint, RegistryError, SchemaRegistry};
use trace_model::secret::Secret;
use trace_model::{DecodeError, Decoder, Encoding, Limits, encode};

const SUBJECT: &str = "llm-traces-value";

fn decoder_with(registry: SchemaRegistry) -> Decoder {
    Decoder::new(Limits::default()).with_registry(registry)
}

#[tokio::test]
async fn registering_returns_the_registry_id_and_asks_once_per_subject_and_schema() {
    let server = RegistryServer::start().await;
    // Another schema registered first, so our id is not 1 by accident.
    let v1_id = server.state.preload(V1_AVSC);
    let registry = client_of(&server);

    let schema_id = registry
        .register(SUBJECT, avro::trace_event_schema())
        .await
        .expect("registers");
    assert_ne!(schema_id, v1_id);
    let again = registry
        .register(SUBJECT, avro::trace_event_schema())
        .await
        .expect("registers again");
    assert_eq!(again, schema_id);
    assert_eq!(server.state.num_registrations(SUBJECT), 1);

    // Clones share the cache.
    let clone = registry.clone();
    assert_eq!(
        clone
            .register(SUBJECT, avro::trace_event_schema())
            .await
            .expect("registers from a clone"),
        schema_id
    );
    assert_eq!(server.state.num_registrations(SUBJECT), 1);

    // Another subject is another registration; the registry answers with the same id.
    let other_subject = "llm-traces-replay-value";
    assert_eq!(
        registry
            .register(other_subject, avro::trace_event_schema())
            .await
            .expect("registers"),
        schema_id
    );
    assert_eq!(server.state.num_registrations(other_subject), 1);

    let expected = SeenHeaders {
        accept: REGISTRY_CONTENT_TYPE.to_owned(),
        content_type: REGISTRY_CONTENT_TYPE.to_owned(),
        authorization: String::new(),
    };
    assert_eq!(
        server.state.headers_seen(),
        vec![expected.clone(), expected]
    );
}

#[tokio::test]
async fn a_registered_schema_decodes_without_fetching_it() {
    let server = RegistryServer::start().await;
    let registry = client_of(&server);
    let schema_id = registry
        .register(SUBJECT, avro::trace_event_schema())
        .await
        .expect("registers");
    let decoder = decoder_with(registry);
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id }).expect("encodes");
    assert_eq!(decoder.decode(&bytes).expect("decodes"), full_trace());
    assert_eq!(
        decoder.decode_fetching(&bytes).await.expect("decodes"),
        full_trace()
    );
    assert_eq!(server.state.num_fetches_total(), 0);
}

#[tokio::test]
async fn confluent_messages_decode_with_exactly_one_fetch_per_schema_id() {
    let server = RegistryServer::start().await;
    // Registered by a producer elsewhere, as the canonical form our client sends.
    let schema_id = server
        .state
        .preload(&avro::trace_event_schema().canonical_form());
    let registry = client_of(&server);
    let decoder = decoder_with(registry.clone());
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id }).expect("encodes");

    assert!(
        matches!(decoder.decode(&bytes), Err(DecodeError::UnknownSchemaId(id)) if id == schema_id),
        "decode alone never fetches"
    );
    for _ in 0..5 {
        assert_eq!(
            decoder.decode_fetching(&bytes).await.expect("decodes"),
            full_trace()
        );
    }
    assert_eq!(decoder.decode(&bytes).expect("cached"), full_trace());
    // A second decoder over a clone of the client shares the cache.
    let second = decoder_with(registry.clone());
    assert_eq!(
        second.decode_fetching(&bytes).await.expect("decodes"),
        full_trace()
    );
    assert_eq!(server.state.num_fetches(schema_id), 1);
    assert_eq!(server.state.num_fetches_total(), 1);
    assert_eq!(server.state.headers_seen()[0].accept, REGISTRY_CONTENT_TYPE);

    // A fresh client (a restarted consumer) fetches once more.
    let restarted = decoder_with(client_of(&server));
    restarted.decode_fetching(&bytes).await.expect("decodes");
    assert_eq!(server.state.num_fetches(schema_id), 2);
}

#[tokio::test]
async fn a_registry_answering_500_yields_transient_registry_unavailable_and_caches_nothing() {
    let server = RegistryServer::start().await;
    let schema_id = server
        .state
        .preload(&avro::trace_event_schema().canonical_form());
    server.state.fail_with(StatusCode::INTERNAL_SERVER_ERROR);
    let decoder = decoder_with(client_of(&server));
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id }).expect("encodes");

    let error = decoder.decode_fetching(&bytes).await.expect_err("outage");
    assert!(
        matches!(
            &error,
            DecodeError::RegistryUnavailable {
                id,
                source: RegistryError::Status { status: 500 },
            } if *id == schema_id
        ),
        "{error:?}"
    );
    assert_eq!(error.reason(), "registry_unavailable");
    assert!(error.is_transient());

    server.state.recover();
    assert_eq!(
        decoder.decode_fetching(&bytes).await.expect("recovered"),
        full_trace()
    );
    assert_eq!(server.state.num_fetches(schema_id), 2);
}

#[tokio::test]
async fn registering_against_a_failing_registry_returns_its_status() {
    let server = RegistryServer::start().await;
    server.state.fail_with(StatusCode::INTERNAL_SERVER_ERROR);
    let registry = client_of(&server);
    let error = registry
        .register(SUBJECT, avro::trace_event_schema())
        .await
        .expect_err("outage");
    assert!(
        matches!(error, RegistryError::Status { status: 500 }),
        "{error:?}"
    );
    server.state.recover();
    registry
        .register(SUBJECT, avro::trace_event_schema())
        .await
        .expect("registers after recovery");
    assert_eq!(server.state.num_registrations(SUBJECT), 2);
}

#[tokio::test]
async fn a_registry_answering_404_yields_permanent_unknown_schema_id() {
    let server = RegistryServer::start().await;
    let decoder = decoder_with(client_of(&server));
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id: 4242 }).expect("encodes");
    let error = decoder
        .decode_fetching(&bytes)
        .await
        .expect_err("not registered");
    assert!(
        matches!(error, DecodeError::UnknownSchemaId(4242)),
        "{error:?}"
    );
    assert_eq!(error.reason(), "unknown_schema_id");
    assert!(!error.is_transient());
    assert_eq!(server.state.num_fetches(4242), 1);
}

#[tokio::test]
async fn a_registry_that_never_answers_yields_registry_unavailable_after_the_client_timeout() {
    let server = RegistryServer::start().await;
    server.state.hang();
    let timeout = Duration::from_millis(300);
    let registry = SchemaRegistry::try_new(&server.url, timeout).expect("client");
    let decoder = decoder_with(registry);
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id: 1 }).expect("encodes");
    let started = Instant::now();
    let error = decoder.decode_fetching(&bytes).await.expect_err("hangs");
    assert!(
        matches!(
            error,
            DecodeError::RegistryUnavailable {
                source: RegistryError::Request(_),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_compatible_older_writer_schema_from_the_registry_decodes_through_resolution() {
    let server = RegistryServer::start().await;
    let v1_id = server.state.preload(V1_AVSC);
    let current_id = server
        .state
        .preload(&avro::trace_event_schema().canonical_form());
    let decoder = decoder_with(client_of(&server));

    let v1_bytes = confluent(v1_id, &v1_datum(&v1_full_trace()));
    let decoded = decoder
        .decode_fetching(&v1_bytes)
        .await
        .expect("v1 decodes");
    assert_eq!(decoded.pipeline_id, None);
    assert_eq!(decoded, v1_full_trace());

    // The same topic may carry both versions; each id is fetched once.
    let current_bytes = encode(
        &full_trace(),
        Encoding::Confluent {
            schema_id: current_id,
        },
    )
    .expect("encodes");
    for _ in 0..3 {
        assert_eq!(
            decoder
                .decode_fetching(&current_bytes)
                .await
                .expect("decodes"),
            full_trace()
        );
        assert_eq!(
            decoder.decode_fetching(&v1_bytes).await.expect("decodes"),
            v1_full_trace()
        );
    }
    assert_eq!(server.state.num_fetches(v1_id), 1);
    assert_eq!(server.state.num_fetches(current_id), 1);
}

#[tokio::test]
async fn sends_basic_credentials_and_accepts_a_base_url_with_a_trailing_slash() {
    let server = RegistryServer::start().await;
    let schema_id = server
        .state
        .preload(&avro::trace_event_schema().canonical_form());
    let registry = SchemaRegistry::try_new(format!("{}/", server.url), Duration::from_secs(5))
        .expect("client")
        .with_basic_auth("registry-user", "s3cret");
    let decoder = decoder_with(registry);
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id }).expect("encodes");
    decoder.decode_fetching(&bytes).await.expect("decodes");
    // base64("registry-user:s3cret")
    assert_eq!(
        server.state.headers_seen()[0].authorization,
        "Basic cmVnaXN0cnktdXNlcjpzM2NyZXQ="
    );
    assert_eq!(server.state.num_fetches(schema_id), 1);
}

// ---- credentials -------------------------------------------------------------------------

const PASSWORD: &str = "sr-secret-4711";
const TOKEN: &str = "sr-token-0815";

fn basic(username: &str, password: &str) -> RegistryAuth {
    RegistryAuth::Basic {
        username: username.to_owned(),
        password: Secret::new(password),
    }
}

fn client_with(server: &RegistryServer, auth: RegistryAuth) -> SchemaRegistry {
    let endpoint = RegistryEndpoint {
        url: server.url.clone(),
        auth,
    };
    SchemaRegistry::try_new(endpoint, Duration::from_secs(5)).expect("client")
}

/// A registry requiring `required`, our schema preloaded, and a Confluent-framed trace.
async fn registry_requiring(required: RequiredAuth) -> (RegistryServer, Vec<u8>) {
    let server = RegistryServer::start().await;
    let schema_id = server
        .state
        .preload(&avro::trace_event_schema().canonical_form());
    server.state.require(required);
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id }).expect("encodes");
    (server, bytes)
}

fn required_basic() -> RequiredAuth {
    RequiredAuth::Basic {
        username: "SR-API-KEY".to_owned(),
        password: PASSWORD.to_owned(),
    }
}

#[tokio::test]
async fn the_right_basic_credentials_decode_a_confluent_framed_trace() {
    let (server, bytes) = registry_requiring(required_basic()).await;
    let registry = client_with(&server, basic("SR-API-KEY", PASSWORD));
    registry.check_access().await.expect("credentials accepted");
    let decoder = decoder_with(registry.clone());
    assert_eq!(
        decoder.decode_fetching(&bytes).await.expect("decodes"),
        full_trace()
    );
    registry
        .register(SUBJECT, avro::trace_event_schema())
        .await
        .expect("registers with the same credentials");
    let expected = required_basic().header_value();
    let seen = server.state.headers_seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter().all(|headers| headers.authorization == expected),
        "every request carries the credentials: {seen:?}"
    );
}

#[tokio::test]
async fn the_right_bearer_token_decodes_a_confluent_framed_trace() {
    let (server, bytes) = registry_requiring(RequiredAuth::Bearer(TOKEN.to_owned())).await;
    let registry = client_with(&server, RegistryAuth::Bearer(Secret::new(TOKEN)));
    registry.check_access().await.expect("token accepted");
    let decoder = decoder_with(registry);
    assert_eq!(
        decoder.decode_fetching(&bytes).await.expect("decodes"),
        full_trace()
    );
    assert_eq!(
        server.state.headers_seen()[1].authorization,
        format!("Bearer {TOKEN}")
    );
    // The builder method sends the same header.
    let built = SchemaRegistry::try_new(&server.url, Duration::from_secs(5))
        .expect("client")
        .with_bearer_token(TOKEN);
    built.check_access().await.expect("token accepted");
}

#[tokio::test]
async fn a_wrong_password_is_a_permanent_unauthorized_error_that_never_shows_the_password() {
    let (server, bytes) = registry_requiring(required_basic()).await;
    let registry = client_with(&server, basic("SR-API-KEY", "not-the-password"));
    let decoder = decoder_with(registry.clone());

    let error = decoder.decode_fetching(&bytes).await.expect_err("refused");
    assert!(
        matches!(
            &error,
            DecodeError::RegistryUnauthorized {
                source: RegistryError::Unauthorized { status: 401 },
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.reason(), "registry_unauthorized");
    assert!(!error.is_transient(), "retrying cannot fix the credentials");
    let chain = service_chain(&error);
    assert!(chain.contains("refused the credentials"), "{chain}");
    assert!(chain.contains("401"), "{chain}");
    for shown in [chain, format!("{error:?}"), format!("{registry:?}")] {
        assert!(!shown.contains("not-the-password"), "{shown}");
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
    // Nothing was cached: the next attempt asks again.
    decoder.decode_fetching(&bytes).await.expect_err("refused");
    assert_eq!(server.state.num_fetches_total(), 2);

    assert!(matches!(
        registry.check_access().await,
        Err(RegistryError::Unauthorized { status: 401 })
    ));
    assert!(matches!(
        registry.register(SUBJECT, avro::trace_event_schema()).await,
        Err(RegistryError::Unauthorized { status: 401 })
    ));
}

#[tokio::test]
async fn missing_credentials_and_a_wrong_token_are_refused() {
    let (server, bytes) = registry_requiring(RequiredAuth::Bearer(TOKEN.to_owned())).await;
    for auth in [
        RegistryAuth::None,
        RegistryAuth::Bearer(Secret::new("expired-token")),
        basic("user", TOKEN),
    ] {
        let decoder = decoder_with(client_with(&server, auth.clone()));
        let error = decoder.decode_fetching(&bytes).await.expect_err("refused");
        assert_eq!(error.reason(), "registry_unauthorized", "{auth:?}");
        assert!(!error.is_transient());
    }
    assert_eq!(server.state.headers_seen()[0].authorization, "");
}

#[tokio::test]
async fn a_registry_answering_403_is_unauthorized_not_an_outage() {
    let server = RegistryServer::start().await;
    let schema_id = server
        .state
        .preload(&avro::trace_event_schema().canonical_form());
    server.state.fail_with(StatusCode::FORBIDDEN);
    let decoder = decoder_with(client_with(&server, basic("SR-API-KEY", PASSWORD)));
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id }).expect("encodes");
    let error = decoder
        .decode_fetching(&bytes)
        .await
        .expect_err("forbidden");
    assert!(
        matches!(
            &error,
            DecodeError::RegistryUnauthorized {
                id,
                source: RegistryError::Unauthorized { status: 403 },
            } if *id == schema_id
        ),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert!(service_chain(&error).contains("forbidden"), "{error}");
}

#[test]
fn endpoints_from_a_bare_url_send_no_credentials_and_never_print_secrets() {
    let endpoint = RegistryEndpoint::from("http://registry:8081");
    assert_eq!(endpoint.auth, RegistryAuth::None);
    let with_secrets = [
        RegistryEndpoint {
            url: "https://registry".to_owned(),
            auth: basic("SR-API-KEY", PASSWORD),
        },
        RegistryEndpoint {
            url: "https://registry".to_owned(),
            auth: RegistryAuth::Bearer(Secret::new(TOKEN)),
        },
    ];
    for endpoint in with_secrets {
        let debug = format!("{endpoint:?}");
        assert!(
            !debug.contains(PASSWORD) && !debug.contains(TOKEN),
            "{debug}"
        );
        assert!(debug.contains("redacted"), "{debug}");
    }
}

/// The error and its sources, as logs show them.
fn service_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}
