//! Identity and the gateway's protections (the API contract Identity and Conventions): register,
//! login, tokens, ownership, body limit, rate limit, timeouts, CORS, request ids, and no
//! secret in a log line or an event.

use std::time::Duration;

use chronicle_tests::{eventually, TestApp};
use reqwest::{Method, StatusCode};

use crate::common::{invalid_fields, problem};
use serde_json::{json, Value};

#[tokio::test]
async fn a_user_registers_logs_in_and_is_looked_up_without_secrets() {
    let app = TestApp::spawn().await;
    let registered = app.register("bob_1", "a long password").await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let user_id = registered.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let login = app.login("bob_1", "a long password").await;
    assert_eq!(login.status(), StatusCode::OK);
    let login: Value = login.json().await.unwrap();
    assert_eq!(login["user_id"], user_id.as_str());
    assert!(login["token"].as_str().unwrap().len() > 20 && login["expires_at"].is_string());

    let user: Value = eventually("the users read model", Duration::from_secs(10), || async {
        let r = app.get(&format!("/api/v1/users/{user_id}")).await;
        if r.status() == StatusCode::OK {
            r.json().await.ok()
        } else {
            None
        }
    })
    .await;
    assert_eq!(user["username"], "bob_1");
    assert_eq!(user["display_name"], "bob_1");
    assert!(user["created_at"].is_string());
    assert_eq!(
        user.as_object().unwrap().len(),
        4,
        "no other fields: {user}"
    );
    problem(
        app.get("/api/v1/users/nobody").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_user_is_found_by_exact_username_and_any_other_name_finds_no_one() {
    let app = TestApp::spawn().await;
    let (bob_id, _) = app.register_and_login("bob_2").await;
    let found = eventually(
        "bob in the users read model",
        Duration::from_secs(10),
        || async {
            let page: Value = app
                .get("/api/v1/users?username=bob_2")
                .await
                .json()
                .await
                .ok()?;
            (page["items"].as_array()?.len() == 1).then_some(page)
        },
    )
    .await;
    assert_eq!(found["items"][0]["user_id"], bob_id.as_str());
    assert_eq!(found["items"][0]["username"], "bob_2");
    assert!(found["items"][0]["password_hash"].is_null(), "{found}");
    assert!(found["next_cursor"].is_null());

    // Exact only: another case, a prefix, a LIKE pattern, a NUL or 1,000 letters finds no one.
    let long = "b".repeat(1000);
    for name in ["BOB_2", "bob_", "bob%25", "bob_2%00", "%25", "", &long] {
        let response = app.get(&format!("/api/v1/users?username={name}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{name:.20}");
        let page: Value = response.json().await.unwrap();
        assert_eq!(page["items"], json!([]), "{name:.20}");
    }
    problem(
        app.get("/api/v1/users").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    let anonymous = app
        .send_anonymous(reqwest::Method::GET, "/api/v1/users?username=bob_2")
        .await;
    problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn bad_registrations_are_422_with_each_field() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"username": "No", "password": "short", "display_name": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        invalid_fields(response).await,
        ["username", "password", "display_name"]
    );
}

#[tokio::test]
async fn concurrent_registrations_of_one_username_give_one_201_and_the_rest_409() {
    let app = TestApp::spawn().await;
    let attempts = (0..10).map(|i| {
        let app = &app;
        async move { app.register("carol", &format!("password number {i}")).await }
    });
    let responses = futures::future::join_all(attempts).await;
    let created = responses
        .iter()
        .filter(|r| r.status() == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1);
    for response in responses
        .into_iter()
        .filter(|r| r.status() != StatusCode::CREATED)
    {
        problem(response, StatusCode::CONFLICT, "username_taken").await;
    }
    let (users, credentials): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM identity.events WHERE aggregate_type = 'user'), (SELECT count(*) FROM identity.credentials)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (users, credentials),
        (2, 2),
        "the tester and one carol; losers left nothing behind"
    );
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_are_401_invalid_credentials() {
    let app = TestApp::spawn().await;
    problem(
        app.login("tester", "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    problem(
        app.login("nobody_here", "whatever!").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    // Names no one can hold, found by schemathesis as a 500: a NUL (PostgreSQL's text refuses
    // it), other control characters, a megabyte.
    let megabyte = "a".repeat(1024 * 1024 - 100);
    for username in [
        "te\u{0}ster",
        "\u{d0}\u{10f6df}\u{85}\u{0}\u{dc}P",
        &megabyte,
    ] {
        problem(
            app.login(username, "not the password").await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
}

#[tokio::test]
async fn missing_tampered_forged_and_expired_tokens_are_401() {
    let app = TestApp::spawn_with(|c| c.token_ttl = Duration::from_secs(1)).await;
    let path = "/api/v1/inventory/items";
    let missing = app.http.get(app.url(path)).send().await.unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    problem(missing, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let mut tampered = app.token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let response = app.get_as(&tampered, path).await;
    problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let other_key = chronicle_gateway::Auth::new(
        &chronicle_gateway::Secret::new(b"another key, not the gateway's own, 32+ bytes".to_vec()),
        Duration::from_secs(3600),
    );
    let (forged, _) = other_key.issue(&app.user_id, vec![]).unwrap();
    let response = app.get_as(&forged, path).await;
    problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let (_, fresh) = app.register_and_login("fresh_user").await;
    let ok = app.get_as(&fresh, path).await;
    assert_eq!(ok.status(), StatusCode::OK, "a fresh token works");
    // Expiry is checked in whole seconds: 2.5 s on, a one-second token is past it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let expired = app.get_as(&fresh, path).await;
    problem(expired, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// Issue 17 (security): a token whose claims were edited by hand to add the staff role, one
/// that says `alg: none` (with or without its signature), and one that names another
/// algorithm are all 401 on a staff-only route, and append nothing.
#[tokio::test]
async fn tokens_with_alg_none_another_alg_or_a_role_added_by_hand_are_401_and_append_nothing() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let app = TestApp::spawn_with_staff(&["boss"]).await;
    let (_, token) = app.register_and_login("mallory").await;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert!(
        !claims["roles"].to_string().contains("staff"),
        "mallory is not staff: {claims}"
    );
    claims["roles"] = json!(["staff"]);
    let staff_claims = b64.encode(claims.to_string());
    let header = |alg: &str| b64.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
    let hostile = [
        (
            "a role added by hand",
            format!("{}.{staff_claims}.{}", parts[0], parts[2]),
        ),
        (
            "alg none, no signature",
            format!("{}.{staff_claims}.", header("none")),
        ),
        (
            "alg none, the old signature",
            format!("{}.{staff_claims}.{}", header("none"), parts[2]),
        ),
        ("alg None", format!("{}.{staff_claims}.", header("None"))),
        (
            "alg HS512, the old signature",
            format!("{}.{}.{}", header("HS512"), parts[1], parts[2]),
        ),
        (
            "alg RS256, the old signature",
            format!("{}.{}.{}", header("RS256"), parts[1], parts[2]),
        ),
    ];
    // A staff-only command.
    let create_item = |token: String| {
        app.http
            .post(app.url("/api/v1/inventory/items"))
            .bearer_auth(token)
            .json(&json!({"sku": "HOSTILE-1", "name": "x", "price_cents": 1, "initial_stock": 1}))
            .send()
    };
    let before = app.event_count().await;
    for (what, token) in hostile {
        let response = create_item(token).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    assert_eq!(app.event_count().await, before, "nothing was appended");
    // The untouched token is still only a customer's.
    let response = create_item(token.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn only_the_user_changes_their_profile_and_a_refusal_appends_nothing() {
    let app = TestApp::spawn().await;
    let (other_id, other_token) = app.register_and_login("mallory").await;
    let before = app.event_count().await;
    let response = app
        .send_json_as(
            &other_token,
            reqwest::Method::PATCH,
            &format!("/api/v1/users/{}", app.user_id),
            &json!({"display_name": "Mallory was here"}),
        )
        .await;
    problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(app.event_count().await, before);

    let own = app
        .send_json(
            Method::PATCH,
            &format!("/api/v1/users/{}", app.user_id),
            &json!({"display_name": "Tess"}),
        )
        .await;
    assert_eq!(own.status(), StatusCode::OK);
    assert_eq!(own.json::<Value>().await.unwrap()["version"], 2);
    assert_ne!(other_id, app.user_id);
}

#[tokio::test]
async fn an_oversized_body_is_413_problem_json() {
    let app = TestApp::spawn_with(|c| c.body_limit = 1024).await;
    let big = json!({"sku": "BIG", "name": "x".repeat(4096), "price_cents": 1, "initial_stock": 1});
    problem(
        app.post("/api/v1/inventory/items", big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn requests_past_the_burst_are_429_with_retry_after() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit = Some(chronicle_gateway::RateLimit {
            per_second: 0.5,
            burst: 3,
        })
    })
    .await;
    // Spawning registered and logged in from this address: its burst is spent.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = app.get("/api/v1/inventory/items").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
            problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_handler_that_outlives_its_timeout_is_answered_503() {
    let app = TestApp::spawn_with(|c| c.handler_timeout = Duration::from_secs(1)).await;
    app.post(
        "/api/v1/inventory/items",
        json!({"sku": "T-1", "name": "T", "price_cents": 1, "initial_stock": 1}),
    )
    .await;
    // Waiting for a version that never comes takes 2 s, past the 1 s timeout.
    let response = app.get("/api/v1/inventory/items/T-1?min_version=99").await;
    problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

#[tokio::test]
async fn cors_preflights_are_answered_and_every_response_has_a_request_id_that_correlates_events() {
    let app = TestApp::spawn().await;
    let preflight = app
        .http
        .request(Method::OPTIONS, app.url("/api/v1/inventory/items"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    let request_id = uuid::Uuid::now_v7();
    let created = app
        .request(Method::POST, "/api/v1/inventory/items")
        .header("x-request-id", request_id.to_string())
        .json(&json!({"sku": "C-1", "name": "C", "price_cents": 1, "initial_stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.headers()["x-request-id"],
        request_id.to_string().as_str()
    );
    let correlation: String = app
        .scalar(
            "SELECT metadata->>'correlation_id' FROM commerce.events WHERE aggregate_id = 'C-1'",
        )
        .await;
    assert_eq!(correlation, request_id.to_string());
    let actor: String = app
        .scalar("SELECT metadata->>'actor' FROM commerce.events WHERE aggregate_id = 'C-1'")
        .await;
    assert_eq!(actor, app.user_id);
    assert!(app
        .get("/health")
        .await
        .headers()
        .contains_key("x-request-id"));
}

/// Regression (issue 10): the key's scope held the user id made afresh for each request,
/// so a retried registration was never recognised.
#[tokio::test]
async fn a_registration_retried_with_its_idempotency_key_gets_the_first_answer() {
    let app = TestApp::spawn().await;
    let before = app.event_count().await;
    let send = || {
        app.http
            .post(app.url("/api/v1/auth/register"))
            .header("Idempotency-Key", "signup-1")
            .json(&json!({"username": "retry", "password": "correct horse", "display_name": "R"}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.json::<Value>().await.unwrap(), first);
    assert_eq!(app.event_count().await, before + 1, "registered once");
    let login: Value = app
        .login("retry", "correct horse")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(login["user_id"], first["user_id"]);
    let credentials: i64 = app
        .scalar("SELECT count(*) FROM identity.credentials")
        .await;
    assert_eq!(credentials, 2, "the replay left no orphan password hash");
}

#[tokio::test]
async fn idempotency_records_are_purged_after_their_24_hours() {
    let app = TestApp::spawn().await;
    for (key, age) in [("old", "25 hours"), ("young", "1 hour")] {
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, request_hash, status, body, created_at) \
             VALUES ('s', $1, '\\x00', 200, '{}', now() - $2::interval)",
        )
        .bind(key)
        .bind(age)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    assert_eq!(
        chronicle_commands::purge_expired(&app.pool, 100)
            .await
            .unwrap(),
        1
    );
    let left: Vec<String> = app
        .scalars("SELECT key FROM idempotency_keys WHERE scope = 's'")
        .await;
    assert_eq!(left, ["young"]);
}
