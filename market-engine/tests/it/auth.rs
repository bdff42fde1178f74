//! Accounts, logins, sessions and tokens over a real socket (issue 10, items 7, 11 and 12):
//! password hashing stays within its capacity under a flood of logins, guessing is throttled
//! per name and per address, logout and revocation end credentials, tokens expire, logins do
//! not tell which names exist, names and passwords follow the policy, and every refusal is
//! JSON. On SQLite and PostgreSQL where accounts are stored.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use market_engine::api::auth::{Auth, AuthConfig, SESSION_COOKIE};
use market_engine::api::{AppState, RateLimits, router};
use market_engine::ingest::{IngestMetrics, KeyRegistry};
use market_engine::market::{Market, MarketConfig};
use market_engine::server::Engine;
use market_engine::store::Store;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{databases, engine_config, unique};

const PASSWORD: &str = "correct horse battery";

/// An answer: status, headers (names lower case) and the body as JSON.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The session secret in `Set-Cookie`.
    fn session(&self) -> String {
        let cookie = self.header("set-cookie").expect("a session cookie");
        let pair = cookie.split(';').next().unwrap();
        pair.strip_prefix(&format!("{SESSION_COOKIE}="))
            .unwrap()
            .to_owned()
    }

    fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: not the JSON error shape: {}", self.status, self.body))
    }
}

/// One HTTP/1.1 request on a new connection, from `from` (a loopback address) if given.
async fn send(
    to: SocketAddr,
    from: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let mut stream = socket.connect(to).await.unwrap();
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut raw = response[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        raw = dechunk(&raw);
    }
    let body = serde_json::from_slice(&raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into()));
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
    out
}

async fn post(to: SocketAddr, path: &str, body: &Value) -> Reply {
    send(
        to,
        None,
        "POST",
        path,
        &[],
        Some(body.to_string().as_bytes()),
    )
    .await
}

async fn login(to: SocketAddr, name: &str, password: &str) -> Reply {
    post(
        to,
        "/api/v1/sessions",
        &json!({"name": name, "password": password}),
    )
    .await
}

async fn sign_up(to: SocketAddr, name: &str) {
    let r = post(
        to,
        "/api/v1/accounts",
        &json!({"name": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// `GET path` with `Authorization: Bearer <token>`.
async fn get_with(to: SocketAddr, path: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send(to, None, "GET", path, &[("Authorization", &auth)], None).await
}

/// The API on a real socket with the peer's address, as the engine serves it.
struct Server {
    addr: SocketAddr,
    auth: Arc<Auth>,
    store: Store,
}

async fn serve(url: &str, config: AuthConfig) -> Server {
    let store = Store::open(url).await.unwrap();
    let market = Arc::new(
        Market::open(MarketConfig::default().community().unwrap(), store.clone())
            .await
            .unwrap(),
    );
    let auth = Arc::new(Auth::new(config));
    let app = router(AppState {
        store: store.clone(),
        keys: KeyRegistry::default(),
        ingest: Arc::new(IngestMetrics::default()),
        market,
        limits: Arc::new(RateLimits::new(100.0, 100.0)),
        meters_per_account: 10,
        tasks: Default::default(),
        chain: Default::default(),
        settler: None,
        broker_auth: Default::default(),
        auth: auth.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server { addr, auth, store }
}

fn retry_after(r: &Reply) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("{} without Retry-After: {}", r.status, r.body))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_logins_with_1kb_passwords_stay_within_the_hashing_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let url = &databases(dir.path()).await[0];
    let config = AuthConfig {
        hashing_concurrency: 2,
        hashing_queue: 4,
        failures_per_address: 10_000,
        ..AuthConfig::default()
    };
    let server = serve(url, config).await;
    let to = server.addr;
    let password = "x".repeat(1024);
    let guesses: Vec<_> = (0..128)
        .map(|i| {
            let body = json!({"name": format!("guess-{i}"), "password": password});
            tokio::spawn(async move { post(to, "/api/v1/sessions", &body).await })
        })
        .collect();
    let mut refused = 0;
    for guess in guesses {
        let r = guess.await.unwrap();
        match r.status {
            401 => {}
            503 => {
                assert!(retry_after(&r) >= 1);
                assert!(r.error().contains("busy"), "{}", r.body);
                refused += 1;
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    let metrics = &server.auth.metrics;
    let peak = metrics.hashes_running_peak.load(Ordering::SeqCst);
    let hashes = metrics.password_hashes.load(Ordering::SeqCst);
    assert!(
        refused > 0,
        "beyond 2 hashing and 4 waiting, logins are refused at once"
    );
    assert!(
        (1..=2).contains(&peak),
        "at most 2 Argon2 computations (19 MiB each) at once, not {peak}"
    );
    assert_eq!(hashes, 128 - refused, "a refused login costs no hash");
    let argon2_memory = server.auth.hashing_memory_bytes();
    assert!(
        (1..=2 * 19 * 1024 * 1024).contains(&argon2_memory),
        "Argon2 memory stays at 2 work areas of 19 MiB, reused: {argon2_memory} bytes"
    );
    assert_eq!(metrics.hashing_busy.load(Ordering::SeqCst), refused);

    // Longer than 1 KiB: refused before any hashing.
    let r = login(to, "guess-0", &"x".repeat(1025)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["field"], "password");
    assert_eq!(metrics.password_hashes.load(Ordering::SeqCst), hashes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_guesses_for_one_name_are_answered_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let config = AuthConfig {
            failures_per_name: 3,
            lockout_s: 60,
            ..AuthConfig::default()
        };
        let server = serve(&url, config).await;
        let to = server.addr;
        let victim = unique("victim");
        let other = unique("other");
        sign_up(to, &victim).await;
        sign_up(to, &other).await;
        for guess in 0..3 {
            let r = login(to, &victim, &format!("guess number {guess}")).await;
            assert_eq!(r.status, 401, "guess {guess} on {url}: {}", r.body);
        }
        let r = login(to, &victim, "guess number 4").await;
        assert_eq!(r.status, 429, "{url}: {}", r.body);
        let wait = retry_after(&r);
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(r.error().contains("try again"), "{}", r.body);
        // Not even the right password is looked at while the name waits.
        let hashes = server.auth.metrics.password_hashes.load(Ordering::SeqCst);
        let r = login(to, &victim, PASSWORD).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(
            server.auth.metrics.password_hashes.load(Ordering::SeqCst),
            hashes
        );
        assert_eq!(
            server.auth.metrics.logins_throttled.load(Ordering::SeqCst),
            2
        );
        // Other names are not held up.
        let r = login(to, &other, PASSWORD).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_guessing_many_names_is_throttled_but_not_its_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        // Through the engine itself: its server passes each peer's address to the API.
        let mut config = engine_config(&unique("auth"), &url);
        config.auth.failures_per_address = 4;
        config.auth.lockout_s = 60;
        let engine = Engine::start(&config).await.unwrap();
        let to = engine.http;
        let attacker: IpAddr = "127.0.0.1".parse().unwrap();
        let neighbour: IpAddr = "127.0.0.2".parse().unwrap();
        let attempt = |from: IpAddr, name: String, forwarded: Option<&'static str>| async move {
            let body = json!({"name": name, "password": "some long guess"}).to_string();
            let headers: Vec<(&str, &str)> = forwarded
                .map(|f| ("X-Forwarded-For", f))
                .into_iter()
                .collect();
            send(
                to,
                Some(from),
                "POST",
                "/api/v1/sessions",
                &headers,
                Some(body.as_bytes()),
            )
            .await
        };
        for i in 0..4 {
            let r = attempt(attacker, format!("name-{i}"), None).await;
            assert_eq!(r.status, 401, "{url}: {}", r.body);
        }
        let r = attempt(attacker, "name-5".into(), None).await;
        assert_eq!(r.status, 429, "{url}: {}", r.body);
        assert!(retry_after(&r) >= 1);
        // A forged X-Forwarded-For is not believed unless the engine is told it has a proxy.
        let r = attempt(attacker, "name-6".into(), Some("192.0.2.7")).await;
        assert_eq!(r.status, 429, "{}", r.body);
        let r = attempt(neighbour, "name-7".into(), None).await;
        assert_eq!(r.status, 401, "another address is not held up: {}", r.body);
        assert_eq!(
            engine.auth.metrics.logins_throttled.load(Ordering::SeqCst),
            2
        );
        engine.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let server = serve(&url, AuthConfig::default()).await;
        let to = server.addr;
        let name = unique("leaver");
        sign_up(to, &name).await;
        let session = login(to, &name, PASSWORD).await.session();
        let cookie = format!("{SESSION_COOKIE}={session}");
        let me = send(to, None, "GET", "/api/v1/me", &[("Cookie", &cookie)], None).await;
        assert_eq!(me.status, 200, "{}", me.body);

        let out = send(
            to,
            None,
            "DELETE",
            "/api/v1/sessions",
            &[("Cookie", &cookie)],
            None,
        )
        .await;
        assert_eq!(out.status, 204, "{url}: {}", out.body);
        let cleared = out.header("set-cookie").unwrap();
        assert!(
            cleared.starts_with(&format!("{SESSION_COOKIE}=;")) && cleared.contains("Max-Age=0"),
            "{cleared}"
        );
        let me = send(to, None, "GET", "/api/v1/me", &[("Cookie", &cookie)], None).await;
        assert_eq!(
            me.status, 401,
            "the old cookie no longer works: {}",
            me.body
        );
        assert_eq!(get_with(to, "/api/v1/me", &session).await.status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_only_their_owner_lists_and_revokes_them() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let server = serve(&url, AuthConfig::default()).await;
        let to = server.addr;
        let (alice, bob) = (unique("alice"), unique("bob"));
        sign_up(to, &alice).await;
        sign_up(to, &bob).await;
        let alice_session = login(to, &alice, PASSWORD).await.session();
        let bob_session = login(to, &bob, PASSWORD).await.session();
        let create = |body: Value| {
            let auth = format!("Bearer {alice_session}");
            async move {
                send(
                    to,
                    None,
                    "POST",
                    "/api/v1/tokens",
                    &[("Authorization", &auth)],
                    Some(body.to_string().as_bytes()),
                )
                .await
            }
        };
        let now = market_engine::pipeline::now_ms();
        let bot = create(json!({"label": "trading bot"})).await;
        assert_eq!(bot.status, 201, "{url}: {}", bot.body);
        let expires = bot.body["expires_ms"].as_u64().unwrap();
        let ninety_days = 90 * 86_400_000;
        assert!(
            (now + ninety_days..now + ninety_days + 60_000).contains(&expires),
            "a token lasts 90 days by default: {}",
            bot.body
        );
        let short = create(json!({"label": "one day", "expires_in_days": 1})).await;
        assert_eq!(short.status, 201, "{}", short.body);
        for days in [0, 366] {
            let r = create(json!({"label": "x", "expires_in_days": days})).await;
            assert_eq!(r.status, 400, "{days}: {}", r.body);
            assert_eq!(r.body["field"], "expires_in_days");
        }
        let bot_token = bot.body["token"].as_str().unwrap().to_owned();
        let short_token = short.body["token"].as_str().unwrap().to_owned();
        let bot_id = bot.body["id"].as_str().unwrap().to_owned();

        let list = get_with(to, "/api/v1/tokens", &alice_session).await;
        assert_eq!(list.status, 200);
        let tokens = list.body["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 2, "{}", list.body);
        assert!(
            tokens.iter().all(|t| t.get("token").is_none()),
            "no secrets listed"
        );
        assert!(
            tokens
                .iter()
                .any(|t| t["id"] == bot_id.as_str() && t["label"] == "trading bot")
        );
        let bobs = get_with(to, "/api/v1/tokens", &bob_session).await;
        assert_eq!(bobs.body["tokens"], json!([]));

        // Bob cannot revoke Alice's token: to him it does not exist.
        let path = format!("/api/v1/tokens/{bot_id}");
        let bob_auth = format!("Bearer {bob_session}");
        let r = send(
            to,
            None,
            "DELETE",
            &path,
            &[("Authorization", &bob_auth)],
            None,
        )
        .await;
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(get_with(to, "/api/v1/me", &bot_token).await.status, 200);
        let alice_auth = format!("Bearer {alice_session}");
        let r = send(
            to,
            None,
            "DELETE",
            &path,
            &[("Authorization", &alice_auth)],
            None,
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let r = get_with(to, "/api/v1/me", &bot_token).await;
        assert_eq!(r.status, 401, "a revoked token is refused: {}", r.body);
        let r = send(
            to,
            None,
            "DELETE",
            &path,
            &[("Authorization", &alice_auth)],
            None,
        )
        .await;
        assert_eq!(r.status, 404);

        // A token past its expiry is refused and no longer listed.
        assert_eq!(get_with(to, "/api/v1/me", &short_token).await.status, 200);
        let hash = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            short_token.as_bytes(),
        ));
        sqlx::query("UPDATE credentials SET expires_ms = $1 WHERE token_hash = $2")
            .bind(i64::try_from(now).unwrap() - 1)
            .bind(hash)
            .execute(server.store.pool())
            .await
            .unwrap();
        let r = get_with(to, "/api/v1/me", &short_token).await;
        assert_eq!(r.status, 401, "an expired token is refused: {}", r.body);
        let list = get_with(to, "/api/v1/tokens", &alice_session).await;
        assert_eq!(list.body["tokens"], json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_is_in_an_http_only_cookie_secure_behind_tls() {
    let dir = tempfile::tempdir().unwrap();
    let url = &databases(dir.path()).await[0];
    let server = serve(url, AuthConfig::default()).await;
    let to = server.addr;
    let name = unique("cookie");
    sign_up(to, &name).await;
    let r = login(to, &name, PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = r.session();
    assert!(
        r.body.get("token").is_none() && !r.body.to_string().contains(&secret),
        "the session's secret is not in the body, where scripts could read it: {}",
        r.body
    );
    assert_eq!(r.body["account"], name.as_str());
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP on loopback: {cookie}"
    );

    let body = json!({"name": name, "password": PASSWORD}).to_string();
    let forwarded = send(
        to,
        None,
        "POST",
        "/api/v1/sessions",
        &[("X-Forwarded-Proto", "https")],
        Some(body.as_bytes()),
    )
    .await;
    assert!(forwarded.header("set-cookie").unwrap().contains("; Secure"));

    let secure = serve(
        url,
        AuthConfig {
            secure_cookies: true,
            ..AuthConfig::default()
        },
    )
    .await;
    let r = login(secure.addr, &name, PASSWORD).await;
    assert!(r.header("set-cookie").unwrap().contains("; Secure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_wrong_passwords_are_answered_alike_after_the_same_work() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let server = serve(&url, AuthConfig::default()).await;
        let to = server.addr;
        let name = unique("known");
        sign_up(to, &name).await;
        let hashes = || server.auth.metrics.password_hashes.load(Ordering::SeqCst);
        let before = hashes();
        let wrong = login(to, &name, "not the password").await;
        assert_eq!(hashes(), before + 1);
        let unknown = login(to, &unique("nobody"), "not the password").await;
        assert_eq!(
            hashes(),
            before + 2,
            "an unknown name costs one Argon2 verification too"
        );
        assert_eq!(wrong.status, 401, "{url}");
        assert_eq!((wrong.status, &wrong.body), (unknown.status, &unknown.body));
        assert_eq!(wrong.error(), "wrong name or password");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_names_are_refused_and_login_normalises_the_name() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let server = serve(&url, AuthConfig::default()).await;
        let to = server.addr;
        let name = unique("home");
        sign_up(to, &name).await;
        for look_alike in [name.to_uppercase(), format!(" {name} ")] {
            let r = post(
                to,
                "/api/v1/accounts",
                &json!({"name": look_alike, "password": PASSWORD}),
            )
            .await;
            assert_eq!(r.status, 409, "{look_alike:?} on {url}: {}", r.body);
        }
        for invalid in [
            format!("{name}."),
            format!("{name}-"),
            format!("{name}..x"),
            "ab".into(),
        ] {
            let r = post(
                to,
                "/api/v1/accounts",
                &json!({"name": invalid, "password": PASSWORD}),
            )
            .await;
            assert_eq!(r.status, 400, "{invalid:?}: {}", r.body);
            assert_eq!(r.body["field"], "name");
        }
        let r = login(to, &format!(" {} ", name.to_uppercase()), PASSWORD).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["account"], name.as_str());

        // An account registered before names were normalised still logs in as it was typed.
        let legacy = unique("Legacy");
        let hash = market_engine::api::auth::hash_password(PASSWORD)
            .await
            .unwrap();
        server
            .store
            .create_account(&legacy, &hash, market_engine::store::Role::Household, 0)
            .await
            .unwrap();
        let r = login(to, &legacy, PASSWORD).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["account"], legacy.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_passwords_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = &databases(dir.path()).await[0];
    let server = serve(url, AuthConfig::default()).await;
    let to = server.addr;
    let name = unique("weak");
    let too_long = "long words ".repeat(100);
    for (password, why) in [
        ("ten letter", "at least 12"),
        ("zzzzzzzzzzzzzzzz", "repeated"),
        (name.as_str(), "account name"),
        ("Password1234", "common"),
        ("qwertyuiop123", "common"),
        (too_long.as_str(), "1024 bytes"),
    ] {
        let r = post(
            to,
            "/api/v1/accounts",
            &json!({"name": name, "password": password}),
        )
        .await;
        assert_eq!(r.status, 400, "{password:?}: {}", r.body);
        assert_eq!(r.body["field"], "password");
        assert!(r.error().contains(why), "{password:?}: {}", r.body);
    }
    let r = post(
        to,
        "/api/v1/accounts",
        &json!({"name": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_and_unknown_routes_answer_in_the_json_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let url = &databases(dir.path()).await[0];
    let server = serve(url, AuthConfig::default()).await;
    let to = server.addr;

    let huge = json!({"name": "big-body", "password": "p".repeat(100_000)}).to_string();
    let r = send(
        to,
        None,
        "POST",
        "/api/v1/accounts",
        &[],
        Some(huge.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.error().contains("larger than"), "{}", r.body);

    for path in ["/api/v1/nothing-here", "/nothing"] {
        let r = send(to, None, "GET", path, &[], None).await;
        assert_eq!(r.status, 404);
        assert!(r.error().contains("no route"), "{}", r.body);
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
    }

    let r = send(
        to,
        None,
        "POST",
        "/api/v1/accounts",
        &[],
        Some(br#"{"name": "#),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("not valid JSON"), "{}", r.body);

    let body = json!({"name": "plain-text", "password": PASSWORD}).to_string();
    let r = send(
        to,
        None,
        "POST",
        "/api/v1/accounts",
        &[("Content-Type", "text/plain")],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 415);
    assert!(r.error().contains("application/json"), "{}", r.body);

    let r = post(
        to,
        "/api/v1/accounts",
        &json!({"name": 5, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["field"], "name", "{}", r.body);
    let r = post(to, "/api/v1/accounts", &json!({"name": "no-password"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["field"], "password", "{}", r.body);

    for path in [
        "/api/v1/slots/not-a-number",
        "/api/v1/settlements?limit=many",
    ] {
        let r = send(to, None, "GET", path, &[], None).await;
        assert_eq!(r.status, 400, "{path}");
        assert!(!r.error().is_empty(), "{path}: {}", r.body);
    }
    let r = send(to, None, "PUT", "/api/v1/me", &[], None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.error(), "method not allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_logout_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let url = &databases(dir.path()).await[0];
    let server = serve(url, AuthConfig::default()).await;
    let doc = send(server.addr, None, "GET", "/openapi.json", &[], None)
        .await
        .body;
    let paths = &doc["paths"];
    for (path, method) in [
        ("/api/v1/sessions", "delete"),
        ("/api/v1/tokens", "get"),
        ("/api/v1/tokens/{token_id}", "delete"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    let session = &doc["components"]["schemas"]["Session"]["properties"];
    assert!(session.get("token").is_none());
    assert!(doc["components"]["schemas"]["Error"]["properties"]["field"].is_object());
}
