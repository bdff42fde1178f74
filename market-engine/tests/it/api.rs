//! The HTTP API without a socket (`Router::oneshot`): accounts, sessions, tokens, meters,
//! validation, and that nobody reads or acts for another account.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use market_engine::api::auth::{Auth, AuthConfig};
use market_engine::api::{AppState, RateLimits, router};
use market_engine::ingest::{IngestMetrics, KeyRegistry};
use market_engine::market::{Market, MarketConfig};
use market_engine::store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{databases, unique};

/// The session secret in a login's `Set-Cookie` (tests send it back as a bearer token).
pub(crate) fn session_of(set_cookie: Option<String>) -> String {
    let set_cookie = set_cookie.expect("a login sets the session cookie");
    let (pair, _) = set_cookie.split_once(';').unwrap();
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(name, market_engine::api::auth::SESSION_COOKIE);
    value.to_owned()
}

pub(crate) async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value, cookie)
}

#[tokio::test]
async fn accounts_meters_and_privacy() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.unwrap();
        let keys = KeyRegistry::default();
        let community = MarketConfig::default().community().unwrap();
        let market = Arc::new(Market::open(community, store.clone()).await.unwrap());
        let app = router(AppState {
            store,
            keys: keys.clone(),
            ingest: Arc::new(IngestMetrics::default()),
            market,
            limits: Arc::new(RateLimits::new(100.0, 100.0)),
            meters_per_account: 10,
            tasks: Default::default(),
            chain: Default::default(),
            settler: None,
            broker_auth: Default::default(),
            auth: Arc::new(Auth::new(AuthConfig::default())),
        });
        let alice = unique("alice");
        let bob = unique("bob");
        for name in [&alice, &bob] {
            let (s, _, _) = call(
                &app,
                "POST",
                "/api/v1/accounts",
                None,
                Some(json!({"name": name, "password": "correct horse battery"})),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{url}");
        }
        let (s, body, _) = call(
            &app,
            "POST",
            "/api/v1/accounts",
            None,
            Some(json!({"name": alice, "password": "correct horse battery"})),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{body}");
        let (s, body, _) = call(
            &app,
            "POST",
            "/api/v1/accounts",
            None,
            Some(json!({"name": "x", "password": "short"})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("name"));
        let (s, _, _) = call(&app, "POST", "/api/v1/accounts", None, Some(json!({"name": "valid-name", "password": "long enough password", "role": "operator"}))).await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "unknown fields (like a role) are refused"
        );

        let (s, _, _) = call(
            &app,
            "POST",
            "/api/v1/sessions",
            None,
            Some(json!({"name": alice, "password": "wrong password!"})),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _, cookie) = call(
            &app,
            "POST",
            "/api/v1/sessions",
            None,
            Some(json!({"name": alice, "password": "correct horse battery"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(cookie.as_deref().unwrap().contains("HttpOnly"));
        let alice_session = session_of(cookie);
        let (_, _, cookie) = call(
            &app,
            "POST",
            "/api/v1/sessions",
            None,
            Some(json!({"name": bob, "password": "correct horse battery"})),
        )
        .await;
        let bob_session = session_of(cookie);

        // An API token for a bot acts as its account.
        let (s, body, _) = call(
            &app,
            "POST",
            "/api/v1/tokens",
            Some(&alice_session),
            Some(json!({"label": "trading bot"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let alice_bot = body["token"].as_str().unwrap().to_owned();
        let (_, me, _) = call(&app, "GET", "/api/v1/me", Some(&alice_bot), None).await;
        assert_eq!(me["name"], alice.as_str());

        let (s, _, _) = call(&app, "GET", "/api/v1/me", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _, _) = call(&app, "GET", "/api/v1/me", Some("not-a-token"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        let vectors: Value =
            serde_json::from_str(include_str!("../../../core/tests/vectors/reading-v1.json"))
                .unwrap();
        let public = vectors["public_key_sec1_hex"].as_str().unwrap();
        let meter = unique("m");
        let meter = meter[meter.len().saturating_sub(30)..].to_owned();
        let (s, body, _) = call(
            &app,
            "POST",
            "/api/v1/meters",
            Some(&alice_bot),
            Some(json!({"meter_id": meter, "public_key": "04abcd"})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("public_key"),
            "{body}"
        );
        let (s, _, _) = call(
            &app,
            "POST",
            "/api/v1/meters",
            Some(&alice_bot),
            Some(json!({"meter_id": "bad/id", "public_key": public})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, body, _) = call(
            &app,
            "POST",
            "/api/v1/meters",
            Some(&alice_bot),
            Some(json!({"meter_id": meter, "public_key": public})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        assert_eq!(body["key_id"], vectors["key_id"]);
        assert!(
            keys.get(&meter).is_some(),
            "the ingest learns the key at once"
        );
        let (s, _, _) = call(
            &app,
            "POST",
            "/api/v1/meters",
            Some(&bob_session),
            Some(json!({"meter_id": meter, "public_key": public})),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::CONFLICT,
            "nobody takes over a registered meter"
        );

        let readings = format!("/api/v1/meters/{meter}/readings");
        let (s, body, _) = call(&app, "GET", &readings, Some(&alice_session), None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let (s, _, _) = call(&app, "GET", &readings, Some(&bob_session), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "bob cannot read alice's meter");
        let (_, bobs, _) = call(&app, "GET", "/api/v1/meters", Some(&bob_session), None).await;
        assert_eq!(bobs["meters"].as_array().unwrap().len(), 0);
        let (s, _, _) = call(
            &app,
            "GET",
            &format!("{readings}?limit=0"),
            Some(&alice_session),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, _) = call(
            &app,
            "GET",
            "/api/v1/meters/nope/readings",
            Some(&alice_session),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        let (s, text, _) = call(&app, "GET", "/metrics", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            text.as_str()
                .unwrap()
                .contains("gridshare_readings_rejected_total{reason=\"bad_signature\"} 0")
        );
        let (s, doc, _) = call(&app, "GET", "/openapi.json", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
