//! The AWS live-connection adapters: connection records in a DynamoDB table (moto), and
//! `PostToConnection` answers mapped to the port's outcomes, against a loopback stand-in for
//! the management API (moto never answers 410, and keeps no readable record of posts).

use std::sync::{Arc, Mutex};

use audio_dedup_core::ports::{ConnectionPoster, ConnectionRegistry, PostError};
use audio_dedup_core::store::aws::{sdk_config, DynamoConnections, DynamoIndex, ManagementApi};
use audio_dedup_core::{ConnectionId, UserId};

fn conn(s: &str) -> ConnectionId {
    s.parse().unwrap()
}

fn user(s: &str) -> UserId {
    s.parse().unwrap()
}

fn aws_env(endpoint: &str) {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", endpoint);
}

#[tokio::test]
async fn connection_records_are_added_listed_capped_and_removed_in_dynamodb() {
    let Some(endpoint) = std::env::var("AUDIO_DEDUP_MOTO_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        assert!(
            std::env::var("AUDIO_DEDUP_REQUIRE_MOTO").as_deref() != Ok("1"),
            "AUDIO_DEDUP_MOTO_ENDPOINT is not set but moto is required"
        );
        eprintln!("skipping: AUDIO_DEDUP_MOTO_ENDPOINT not set (scripts/test starts moto)");
        return;
    };
    aws_env(&endpoint);
    let cfg = sdk_config().await;
    let table = format!("audio-dedup-live-{}", std::process::id());
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    DynamoIndex::new(ddb.clone(), table.clone())
        .create_table()
        .await
        .expect("table");
    let reg = DynamoConnections::new(ddb.clone(), table.clone());
    for c in ["B2=", "B1=", "B3="] {
        reg.add(&user("bob"), &conn(c), 1_800_000_000)
            .await
            .unwrap();
    }
    reg.add(&user("bobby"), &conn("X1="), 1).await.unwrap();
    assert_eq!(
        reg.list(&user("bob"), 25).await.unwrap(),
        vec![conn("B1="), conn("B2="), conn("B3=")],
        "one user's connections, not another's whose id shares a prefix"
    );
    assert_eq!(reg.list(&user("bob"), 2).await.unwrap().len(), 2);
    reg.remove(&user("bob"), &conn("B2=")).await.unwrap();
    reg.remove(&user("bob"), &conn("B2=")).await.unwrap();
    assert_eq!(
        reg.list(&user("bob"), 25).await.unwrap(),
        vec![conn("B1="), conn("B3=")]
    );
    // The TTL attribute the template names, as a number of seconds.
    let item = ddb
        .get_item()
        .table_name(&table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("LIVE#bob".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("CONN#B1=".into()),
        )
        .send()
        .await
        .unwrap();
    let expires = item.item().and_then(|i| i.get("expires_at")).cloned();
    assert_eq!(
        expires,
        Some(aws_sdk_dynamodb::types::AttributeValue::N(
            "1800000000".into()
        ))
    );
}

/// Connection id and body of each post the stand-in accepted.
type Posts = Arc<Mutex<Vec<(String, String)>>>;

/// A stand-in management API: 410 GoneException for `gone=`, 500 for `broken=`, 200 for
/// the rest, recording each posted body.
async fn management_stub() -> (String, Posts) {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let posts: Posts = Arc::default();
    let app = axum::Router::new()
        .route(
            "/live/@connections/{id}",
            axum::routing::post(
                |State(posts): State<Posts>, Path(id): Path<String>, body: String| async move {
                    match id.as_str() {
                        "gone=" => (
                            StatusCode::GONE,
                            [("x-amzn-ErrorType", "GoneException")],
                            r#"{"message":null}"#,
                        )
                            .into_response(),
                        "broken=" => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [("x-amzn-ErrorType", "InternalServerErrorException")],
                            "{}",
                        )
                            .into_response(),
                        _ => {
                            posts.lock().unwrap().push((id, body));
                            StatusCode::OK.into_response()
                        }
                    }
                },
            ),
        )
        .with_state(posts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/live"), posts)
}

#[tokio::test]
async fn post_to_connection_answers_map_to_delivered_gone_and_failed() {
    use aws_sdk_apigatewaymanagement::config::{retry::RetryConfig, Credentials, Region};
    let (endpoint, posts) = management_stub().await;
    // Everything the environment could say is set here: the other test sets it meanwhile.
    let cfg = sdk_config().await;
    let client = aws_sdk_apigatewaymanagement::Client::from_conf(
        aws_sdk_apigatewaymanagement::config::Builder::from(&cfg)
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let api = ManagementApi::new(client);
    let body = br#"{"kind":"feed","cursor":"7"}"#;
    api.post(&conn("ok="), body).await.unwrap();
    assert_eq!(
        posts.lock().unwrap().clone(),
        vec![("ok=".to_string(), String::from_utf8(body.to_vec()).unwrap())],
        "the stage path is kept and the body posted as is"
    );
    assert!(matches!(
        api.post(&conn("gone="), body).await,
        Err(PostError::Gone)
    ));
    assert!(matches!(
        api.post(&conn("broken="), body).await,
        Err(PostError::Store(_))
    ));
}
