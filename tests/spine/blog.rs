//! The blog through HTTP on real servers (the API contract Blog, issue 6): drafts, publishing, edits,
//! tags, full-text search, sanitized Markdown, comments, pagination and the post cache.

use std::{collections::BTreeSet, time::Duration};

use chronicle_tests::{eventually, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{invalid_fields, problem};

const WAIT: Duration = Duration::from_secs(20);

/// Drafts a post as the default user: its id.
async fn draft(app: &TestApp, title: &str, body: &str, tags: &[&str]) -> String {
    draft_as(app, &app.token, title, body, tags).await
}

async fn draft_as(app: &TestApp, token: &str, title: &str, body: &str, tags: &[&str]) -> String {
    let r = app
        .post_as(
            token,
            "/api/v1/posts",
            &json!({"title": title, "body_markdown": body, "tags": tags}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = r.json().await.unwrap();
    assert_eq!(
        (&created["status"], &created["version"]),
        (&json!("draft"), &json!(1))
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/posts/{id}"));
    id
}

async fn act(app: &TestApp, token: &str, method: Method, path: &str) -> reqwest::Response {
    app.http
        .request(method, app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Publishes as the default user and waits until the read model shows it.
async fn publish(app: &TestApp, id: &str) -> Value {
    let r = act(
        app,
        &app.token,
        Method::POST,
        &format!("/api/v1/posts/{id}/publish"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let published: Value = r.json().await.unwrap();
    assert_eq!(published["status"], "published");
    let version = published["version"].as_u64().unwrap();
    let post = read(app, &app.token, id, version).await;
    assert_eq!(post["status"], "published");
    post
}

/// The post at `min_version` as seen with `token`.
async fn read(app: &TestApp, token: &str, id: &str, min_version: u64) -> Value {
    let r = act(
        app,
        token,
        Method::GET,
        &format!("/api/v1/posts/{id}?min_version={min_version}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["chronicle-consistency"], "fresh");
    r.json().await.unwrap()
}

async fn listed_ids(app: &TestApp, query: &str) -> Vec<String> {
    let page: Value = app.get_json(&format!("/api/v1/posts{query}")).await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn tag_counts(app: &TestApp) -> Value {
    app.get("/api/v1/tags").await.json().await.unwrap()
}

#[tokio::test]
async fn a_draft_is_seen_by_its_author_only_until_it_is_published() {
    let app = TestApp::spawn().await;
    let (_, other) = app.register_and_login("reader").await;
    let id = draft(&app, "Hello", "First *post*", &["Intro", "rust"]).await;

    let mine = read(&app, &app.token, &id, 1).await;
    assert_eq!(mine["status"], "draft");
    assert_eq!(mine["author_id"], app.user_id.as_str());
    assert_eq!(mine["tags"], json!(["intro", "rust"]));
    assert_eq!(mine["body_html"], "<p>First <em>post</em></p>\n");
    assert_eq!(mine["comment_count"], 0);
    assert!(mine["published_at"].is_null() && mine["created_at"].is_string());
    problem(
        act(&app, &other, Method::GET, &format!("/api/v1/posts/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(
        listed_ids(&app, "").await.is_empty(),
        "drafts are not listed"
    );

    let published = publish(&app, &id).await;
    assert!(published["published_at"].is_string());
    let seen: Value = act(&app, &other, Method::GET, &format!("/api/v1/posts/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["title"], "Hello");
    assert_eq!(listed_ids(&app, "").await, [id.as_str()]);

    let r = act(
        &app,
        &app.token,
        Method::POST,
        &format!("/api/v1/posts/{id}/unpublish"),
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "draft");
    read(&app, &app.token, &id, 3).await;
    eventually("the post to leave the list", WAIT, || async {
        listed_ids(&app, "").await.is_empty().then_some(())
    })
    .await;
    problem(
        act(&app, &other, Method::GET, &format!("/api/v1/posts/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn only_the_author_edits_publishes_or_deletes_and_a_refusal_appends_nothing() {
    let app = TestApp::spawn().await;
    let (_, other) = app.register_and_login("mallory").await;
    let id = draft(&app, "Mine", "text", &[]).await;
    publish(&app, &id).await;
    let before = app.event_count().await;
    let patch = app
        .send_json_as(
            &other,
            reqwest::Method::PATCH,
            &format!("/api/v1/posts/{id}"),
            &json!({"title": "Defaced"}),
        )
        .await;
    problem(patch, StatusCode::FORBIDDEN, "forbidden").await;
    for (method, path) in [
        (Method::POST, format!("/api/v1/posts/{id}/unpublish")),
        (Method::DELETE, format!("/api/v1/posts/{id}")),
    ] {
        problem(
            act(&app, &other, method, &path).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    assert_eq!(app.event_count().await, before);

    // The author's edit is read back at once with min_version, though the post was cached.
    let cached = read(&app, &app.token, &id, 2).await;
    assert_eq!(cached["title"], "Mine");
    let edited = app
        .send_json(
            Method::PATCH,
            &format!("/api/v1/posts/{id}"),
            &json!({"title": "Mine, edited", "body_markdown": "**new** text"}),
        )
        .await;
    assert_eq!(edited.status(), StatusCode::OK);
    let version = edited.json::<Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    assert_eq!(version, 3);
    let fresh = read(&app, &app.token, &id, version).await;
    assert_eq!(fresh["title"], "Mine, edited");
    assert_eq!(fresh["body_html"], "<p><strong>new</strong> text</p>\n");
    // And without min_version, once the projection has notified, no stale copy is served.
    let plain: Value = app.get_json(&format!("/api/v1/posts/{id}")).await;
    assert_eq!(plain["version"], 3);

    assert_eq!(
        invalid_fields(
            app.request(Method::PATCH, &format!("/api/v1/posts/{id}"))
                .json(&json!({"title": " ", "tags": ["no spaces"]}))
                .send()
                .await
                .unwrap()
        )
        .await,
        ["title", "tags"]
    );
    assert_eq!(
        invalid_fields(
            app.request(Method::PATCH, &format!("/api/v1/posts/{id}"))
                .json(&json!({}))
                .send()
                .await
                .unwrap()
        )
        .await,
        ["body"]
    );

    let deleted = act(
        &app,
        &app.token,
        Method::DELETE,
        &format!("/api/v1/posts/{id}"),
    )
    .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(deleted.headers()["etag"], "\"4\"");
    eventually("the deleted post to be gone", WAIT, || async {
        (app.get(&format!("/api/v1/posts/{id}")).await.status() == StatusCode::NOT_FOUND)
            .then_some(())
    })
    .await;
    problem(
        act(
            &app,
            &app.token,
            Method::POST,
            &format!("/api/v1/posts/{id}/publish"),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn tag_counts_follow_publishing_tag_changes_and_deletion() {
    let app = TestApp::spawn().await;
    let a = draft(&app, "A", "a", &["rust", "db"]).await;
    let b = draft(&app, "B", "b", &["rust"]).await;
    assert_eq!(
        tag_counts(&app).await,
        json!([]),
        "drafts count for nothing"
    );
    publish(&app, &a).await;
    publish(&app, &b).await;
    assert_eq!(
        tag_counts(&app).await,
        json!([{"tag": "rust", "count": 2}, {"tag": "db", "count": 1}])
    );
    let r = app
        .send_json(
            Method::PATCH,
            &format!("/api/v1/posts/{b}"),
            &json!({"tags": ["go"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    read(&app, &app.token, &b, 3).await;
    assert_eq!(
        tag_counts(&app).await,
        json!([{"tag": "db", "count": 1}, {"tag": "go", "count": 1}, {"tag": "rust", "count": 1}])
    );
    assert_eq!(listed_ids(&app, "?tag=go").await, [b.as_str()]);
    act(
        &app,
        &app.token,
        Method::DELETE,
        &format!("/api/v1/posts/{a}"),
    )
    .await;
    let counts = eventually("the deletion to count", WAIT, || async {
        let counts = tag_counts(&app).await;
        (counts.as_array().unwrap().len() == 1).then_some(counts)
    })
    .await;
    assert_eq!(counts, json!([{"tag": "go", "count": 1}]));
}

#[tokio::test]
async fn search_finds_words_ranks_title_matches_first_and_parses_any_input_safely() {
    let app = TestApp::spawn().await;
    let in_body = draft(
        &app,
        "Weekly notes",
        "We tuned the PostgreSQL planner today.",
        &[],
    )
    .await;
    let in_title = draft(
        &app,
        "The planner explained",
        "How queries get their plans.",
        &[],
    )
    .await;
    let other = draft(&app, "Gardening", "Tomatoes need sun.", &[]).await;
    for id in [&in_body, &in_title, &other] {
        publish(&app, id).await;
    }
    assert_eq!(listed_ids(&app, "?q=tomatoes").await, [other.as_str()]);
    assert_eq!(listed_ids(&app, "?q=postgresql").await, [in_body.as_str()]);
    assert!(listed_ids(&app, "?q=kubernetes").await.is_empty());
    assert_eq!(
        listed_ids(&app, "?q=planner").await,
        [in_title.as_str(), in_body.as_str()],
        "a title match ranks first"
    );
    assert_eq!(
        listed_ids(&app, "?q=planner%20-today").await,
        [in_title.as_str()]
    );
    // websearch_to_tsquery never fails on user input.
    for hostile in [
        "%22unclosed",
        "a%20%26%20%7C%20!",
        "%27);%20DROP%20TABLE%20posts;--",
        "or",
        // A NUL, which PostgreSQL's text refuses: a 500 until schemathesis found it.
        "a%00b",
        "%00",
    ] {
        let r = app.get(&format!("/api/v1/posts?q={hostile}")).await;
        assert_eq!(r.status(), StatusCode::OK, "q={hostile}");
    }
    // No tag or author holds a NUL: nothing matches, and nothing fails.
    for filter in ["tag=a%00b", "author=a%00b"] {
        let r = app.get(&format!("/api/v1/posts?{filter}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{filter}");
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["items"], json!([]), "{filter}");
    }
    assert_eq!(listed_ids(&app, "").await.len(), 3);
}

#[tokio::test]
async fn script_tags_and_event_handlers_never_reach_body_html() {
    let app = TestApp::spawn().await;
    let body = "Hi <script>alert('x')</script>\n\n<img src=\"a.png\" onerror=\"alert(1)\">\n\n[link](javascript:alert(1))";
    let id = draft(&app, "Hostile", body, &[]).await;
    let post = read(&app, &app.token, &id, 1).await;
    assert_eq!(post["body_markdown"], body, "the source is kept as written");
    let html = post["body_html"].as_str().unwrap().to_lowercase();
    for banned in ["<script", "onerror", "javascript:"] {
        assert!(!html.contains(banned), "{banned} in {html}");
    }
    assert!(html.contains("<img src=\"a.png\">"), "{html}");
}

#[tokio::test]
async fn a_preview_renders_as_the_saved_post_would_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let body = "Some **bold** text <script>alert('x')</script>\n\n<img src=\"a.png\" onerror=\"alert(1)\">\n\n[link](javascript:alert(1))";
    let before = app.event_count().await;
    let preview = |token: Option<&str>, payload: Value| {
        let mut request = app
            .http
            .post(app.url("/api/v1/posts/preview"))
            .json(&payload);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let r = preview(Some(&app.token), json!({"body_markdown": body}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let previewed: Value = r.json().await.unwrap();
    let html = previewed["body_html"].as_str().unwrap();
    assert!(html.contains("<strong>bold</strong>"), "{html}");
    for banned in ["<script", "onerror", "javascript:"] {
        assert!(!html.to_lowercase().contains(banned), "{banned} in {html}");
    }
    // Nothing was stored, and the preview is the very HTML the saved post gets.
    assert_eq!(app.event_count().await, before);
    let id = draft(&app, "Previewed", body, &[]).await;
    assert_eq!(read(&app, &app.token, &id, 1).await["body_html"], html);

    // A post's limits, a problem for anything else, and no anonymous rendering.
    let too_long = "x".repeat(100_001); // a post's body is at most 100,000 characters
    for bad in [
        json!({"body_markdown": too_long}),
        json!({"body_markdown": "a\u{0}b"}),
    ] {
        let fields = invalid_fields(preview(Some(&app.token), bad).await.unwrap()).await;
        assert_eq!(fields, ["body_markdown"]);
    }
    for bad in [
        json!({}),
        json!({"body_markdown": 7}),
        json!({"body_markdown": "x", "title": "y"}),
    ] {
        let r = preview(Some(&app.token), bad.clone()).await.unwrap();
        assert!(r.status().is_client_error(), "{bad}: {}", r.status());
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
    }
    problem(
        preview(None, json!({"body_markdown": "x"})).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn comments_need_a_published_post_and_are_deleted_by_their_author_or_the_posts() {
    let app = TestApp::spawn().await;
    let (_, bob) = app.register_and_login("bob").await;
    let (_, eve) = app.register_and_login("eve").await;
    let id = draft(&app, "Open for comments", "text", &[]).await;
    let comment_path = format!("/api/v1/posts/{id}/comments");
    let comment = |token: &str, body: &str| {
        app.http
            .post(app.url(&comment_path))
            .bearer_auth(token)
            .json(&json!({"body": body}))
            .send()
    };
    problem(
        comment(&app.token, "on my draft").await.unwrap(),
        StatusCode::CONFLICT,
        "post_not_published",
    )
    .await;
    problem(
        comment(&bob, "on someone's draft").await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    publish(&app, &id).await;
    assert_eq!(
        invalid_fields(comment(&bob, "  ").await.unwrap()).await,
        ["body"]
    );

    let mut ids = Vec::new();
    for (token, text) in [(&bob, "first"), (&eve, "second"), (&bob, "third")] {
        let r = comment(token, text).await.unwrap();
        ids.push(chronicle_tests::created_id(r).await);
    }
    let post = eventually("three comments counted", WAIT, || async {
        let post: Value = app
            .get(&format!("/api/v1/posts/{id}"))
            .await
            .json()
            .await
            .ok()?;
        (post["comment_count"] == 3).then_some(post)
    })
    .await;
    assert_eq!(post["status"], "published");
    let page: Value = app.get_json(&format!("{comment_path}?limit=2")).await;
    assert_eq!(page["items"][0]["body"], "first");
    assert_eq!(page["items"][1]["body"], "second");
    let rest: Value = app
        .get(&format!(
            "{comment_path}?limit=2&cursor={}",
            page["next_cursor"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"][0]["body"], "third");
    assert!(rest["next_cursor"].is_null());

    let delete = |token: &str, cid: &str| {
        app.http
            .delete(app.url(&format!("{comment_path}/{cid}")))
            .bearer_auth(token)
            .send()
    };
    let before = app.event_count().await;
    problem(
        delete(&eve, &ids[0]).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(app.event_count().await, before);
    // The comment's author, and the post's author.
    assert_eq!(
        delete(&bob, &ids[0]).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(&app.token, &ids[1]).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    problem(
        delete(&bob, &ids[0]).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let post = eventually("one comment left", WAIT, || async {
        let post: Value = app
            .get(&format!("/api/v1/posts/{id}"))
            .await
            .json()
            .await
            .ok()?;
        (post["comment_count"] == 1).then_some(post)
    })
    .await;
    assert_eq!(post["comment_count"], 1);
    let left: Value = app.get(&comment_path).await.json().await.unwrap();
    assert_eq!(left["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn paging_through_120_posts_returns_each_exactly_once_newest_first() {
    let app = TestApp::spawn().await;
    let mut published = Vec::new();
    for i in 0..120 {
        let id = draft(&app, &format!("Post {i}"), "body", &["many"]).await;
        let r = act(
            &app,
            &app.token,
            Method::POST,
            &format!("/api/v1/posts/{id}/publish"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        published.push(id);
    }
    eventually("all 120 listed", WAIT, || async {
        let counts = tag_counts(&app).await;
        (counts == json!([{"tag": "many", "count": 120}])).then_some(())
    })
    .await;
    let seen = app.page_through("/api/v1/posts", 25, "id").await;
    assert_eq!(seen.len(), 120);
    assert_eq!(
        seen.iter().collect::<BTreeSet<_>>().len(),
        120,
        "no post twice"
    );
    published.reverse();
    assert_eq!(seen, published, "newest first");
    problem(
        app.get("/api/v1/posts?cursor=bm9wZQ").await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    )
    .await;
}

#[tokio::test]
async fn the_event_stream_of_one_post() {
    let app = TestApp::spawn().await;
    let (_, bob) = app.register_and_login("bob").await;
    let id = draft(&app, "A story", "Once *upon* a time", &["Tales"]).await;
    app.request(Method::PATCH, &format!("/api/v1/posts/{id}"))
        .json(&json!({"body_markdown": "Once upon a time, the end.", "tags": ["tales", "short"]}))
        .send()
        .await
        .unwrap();
    publish(&app, &id).await;
    let comment: Value = app
        .post_as(
            &bob,
            &format!("/api/v1/posts/{id}/comments"),
            &json!({"body": "Lovely"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let comment_id = comment["id"].as_str().unwrap().to_owned();
    act(
        &app,
        &app.token,
        Method::DELETE,
        &format!("/api/v1/posts/{id}/comments/{comment_id}"),
    )
    .await;
    act(
        &app,
        &app.token,
        Method::POST,
        &format!("/api/v1/posts/{id}/unpublish"),
    )
    .await;
    act(
        &app,
        &app.token,
        Method::DELETE,
        &format!("/api/v1/posts/{id}"),
    )
    .await;

    let rows: Vec<(String, i64, String, Value, Value)> = sqlx::query_as(
        "SELECT aggregate_type, sequence, event_type, payload, metadata FROM blog.events \
         WHERE aggregate_type IN ('post', 'comment') ORDER BY aggregate_type DESC, sequence",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let bob_id = app
        .scalar::<String>("SELECT user_id FROM identity.users WHERE username = 'bob'")
        .await;
    let stream: Vec<Value> = rows
        .iter()
        .map(|(t, s, event_type, payload, metadata)| {
            json!({"event": format!("{t}#{s}"), "type": event_type, "payload": payload[event_type], "actor": metadata["actor"]})
        })
        .collect();
    let text = serde_json::to_string(&stream)
        .unwrap()
        .replace(&id, "[post]")
        .replace(&comment_id, "[comment]")
        .replace(&app.user_id, "[author]")
        .replace(&bob_id, "[bob]");
    insta::assert_json_snapshot!(serde_json::from_str::<Value>(&text).unwrap());
}

#[tokio::test]
async fn replaying_the_posts_read_model_gives_the_same_rows_byte_for_byte() {
    let app = TestApp::spawn().await;
    let (_, bob) = app.register_and_login("bob").await;
    let kept = draft(&app, "Kept", "kept *body*", &["a", "b"]).await;
    let draft_only = draft(&app, "Draft", "unseen", &["b"]).await;
    let gone = draft(&app, "Gone", "deleted later", &[]).await;
    publish(&app, &kept).await;
    publish(&app, &gone).await;
    for post in [&kept, &gone] {
        let r = app
            .post_as(
                &bob,
                &format!("/api/v1/posts/{post}/comments"),
                &json!({"body": "hi"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    act(
        &app,
        &app.token,
        Method::DELETE,
        &format!("/api/v1/posts/{gone}"),
    )
    .await;
    let rows = || async {
        let posts: Vec<String> = app
            .scalars("SELECT row_to_json(p)::text FROM blog.posts p ORDER BY id")
            .await;
        let comments: Vec<String> = app
            .scalars("SELECT row_to_json(c)::text FROM blog.post_comments c ORDER BY id")
            .await;
        (posts, comments)
    };
    let live = eventually("the projection to settle", WAIT, || async {
        let (posts, comments) = rows().await;
        (posts.len() == 2 && comments.len() == 1 && posts[0].contains("\"comment_count\":1"))
            .then_some((posts, comments))
    })
    .await;
    assert!(live.0[1].contains(&draft_only));
    let tables = ["posts", "post_comments"];
    let indexes = chronicle_tests::indexes_of(&app.pool, "blog", &tables).await;
    sqlx::query("UPDATE blog.posts SET title = 'damaged'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.replay("posts", chronicle_projections::ReplayFrom::Log, 3)
        .await;
    assert_eq!(rows().await, live);
    // The comments' index by post, kept while filling, and the others, built after it.
    assert_eq!(
        chronicle_tests::indexes_of(&app.pool, "blog", &tables).await,
        indexes
    );
}

/// A published post whose reads (and the tag list) are served from the cache, with its
/// read-model row changed underneath (title `changed underneath`, tag `u`) without a
/// notification.
async fn cached_post_changed_underneath(app: &TestApp) -> String {
    let id = draft(app, "Cached", "body", &["t"]).await;
    publish(app, &id).await;
    // Change the read model behind the cache's back, without the projection's notification:
    // a cached read still answers the old row. (A read is only cached when no notification
    // came in while it ran, so the first reads after the publish may not be.)
    let underneath = |title: &'static str, tags: &'static str| {
        let (pool, id) = (app.pool.clone(), id.clone());
        async move {
            sqlx::query("UPDATE blog.posts SET title = $2, tags = $3::text[] WHERE id = $1")
                .bind(id)
                .bind(title)
                .bind(tags)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    eventually("reads served from the cache", WAIT, || async {
        app.get(&format!("/api/v1/posts/{id}")).await;
        tag_counts(app).await;
        underneath("changed underneath", "{u}").await;
        let post: Value = app
            .get(&format!("/api/v1/posts/{id}"))
            .await
            .json()
            .await
            .ok()?;
        let tags = tag_counts(app).await;
        if post["title"] == "Cached" && tags == json!([{"tag": "t", "count": 1}]) {
            return Some(());
        }
        // Not cached this time (a notification came in mid-read), so the changed row may be
        // what got cached: put the row back and drop it from the cache, as the projection's
        // notification would, then try again.
        underneath("Cached", "{t}").await;
        sqlx::query("SELECT pg_notify('chronicle_posts', $1)")
            .bind(&id)
            .execute(&app.pool)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        None
    })
    .await;
    id
}

#[tokio::test]
async fn post_reads_come_from_the_cache_until_the_projection_says_the_post_changed() {
    let app = TestApp::spawn().await;
    let id = cached_post_changed_underneath(&app).await;
    // What the projection sends when it commits a change to the post.
    sqlx::query("SELECT pg_notify('chronicle_posts', $1)")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    eventually("the cache to drop the post", WAIT, || async {
        let post: Value = app
            .get(&format!("/api/v1/posts/{id}"))
            .await
            .json()
            .await
            .ok()?;
        (post["title"] == "changed underneath").then_some(())
    })
    .await;
    assert_eq!(tag_counts(&app).await, json!([{"tag": "u", "count": 1}]));
}

/// Regression (issue 10): sqlx's listener reconnected silently, so invalidations sent while
/// it was away were lost and stale posts were served until their TTL.
#[tokio::test]
async fn the_post_cache_empties_when_its_listener_connection_is_lost() {
    let app = TestApp::spawn().await;
    let id = cached_post_changed_underneath(&app).await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%chronicle_posts%'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(killed, [true], "the cache's listening backend was found");
    eventually("the cache to drop everything", WAIT, || async {
        let post: Value = app
            .get(&format!("/api/v1/posts/{id}"))
            .await
            .json()
            .await
            .ok()?;
        (post["title"] == "changed underneath").then_some(())
    })
    .await;
    assert_eq!(tag_counts(&app).await, json!([{"tag": "u", "count": 1}]));
}

/// Upcasting (issue 15): a comment stored at version 1 (`body`, before the field became
/// `body_markdown`) is still in the store and the stream. The projector shows it, the
/// aggregate's load decides a delete on it, and a replay rebuilds the same rows.
#[tokio::test]
async fn a_comment_stored_at_version_1_is_read_as_version_2_everywhere() {
    let app = TestApp::spawn().await;
    let post = draft(&app, "Old comments", "body", &[]).await;
    publish(&app, &post).await;
    let comment = uuid::Uuid::now_v7().to_string();
    let fields = json!({"comment_id": comment, "post_id": post, "post_author_id": app.user_id,
                        "author_id": app.user_id, "body": "Written in **2025**"});
    let event_id = uuid::Uuid::now_v7();
    let correlation_id = uuid::Uuid::now_v7();
    let envelope = json!({
        "event_id": event_id, "event_type": "CommentAdded", "event_version": "1",
        "context": "blog", "aggregate_type": "comment", "aggregate_id": comment, "sequence": 1,
        "recorded_at": "2025-06-01T12:00:00Z", "correlation_id": correlation_id,
        "actor": app.user_id, "payload": fields,
    });
    // As a version-1 writer stored it: the event row, and its outbox row for the relay.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO blog.events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('comment', $1, 1, 'CommentAdded', '1', $2, $3)",
    )
    .bind(&comment)
    .bind(json!({"CommentAdded": fields}))
    .bind(json!({"event_id": event_id, "recorded_at": "2025-06-01T12:00:00Z",
                 "correlation_id": correlation_id, "actor": app.user_id}))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO blog.outbox (subject, message_id, event_type, event_version, aggregate_sequence, correlation_id, envelope) \
         VALUES ($1, $2, 'CommentAdded', '1', 1, $3, $4)",
    )
    .bind(format!("events.blog.comment.{comment}"))
    .bind(format!("comment:{comment}:1"))
    .bind(correlation_id)
    .bind(serde_json::to_vec(&envelope).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // The projector reads it as version 2.
    let shown = eventually("the old comment on the post", WAIT, || async {
        let comments: Value = app
            .get(&format!("/api/v1/posts/{post}/comments"))
            .await
            .json()
            .await
            .ok()?;
        let items = comments["items"].as_array()?.clone();
        (items.len() == 1).then_some(items)
    })
    .await;
    assert_eq!(shown[0]["id"], comment.as_str());
    assert_eq!(shown[0]["body"], "Written in **2025**");
    // A replay reads it the same way: the same rows.
    let rows = || async {
        app.scalars::<String>("SELECT row_to_json(c)::text FROM blog.post_comments c ORDER BY id")
            .await
    };
    let live = rows().await;
    app.replay("posts", chronicle_projections::ReplayFrom::Log, 2)
        .await;
    assert_eq!(rows().await, live);
    // The aggregate's load decides on it: its author deletes it, appending version 2.
    let deleted = act(
        &app,
        &app.token,
        Method::DELETE,
        &format!("/api/v1/posts/{post}/comments/{comment}"),
    )
    .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let versions: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, event_version FROM blog.events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&comment)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        [
            ("CommentAdded".to_owned(), "1".to_owned()),
            ("CommentDeleted".to_owned(), "1".to_owned())
        ],
        "the old event stays as it was written"
    );
}
