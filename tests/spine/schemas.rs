//! Each bounded context's tables live in its own PostgreSQL schema, its event store's among
//! them, and the harness proves no context reaches another's: every context's pool logs in
//! as a role granted only its own schema.

use chronicle_commands::contexts;
use std::time::Duration;

use chronicle_tests::{eventually, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection};

/// The tables of a context's store, in its schema: its event store's and its readers'.
const STORE_TABLES: &[&str] = &[
    "events",
    "snapshots",
    "outbox",
    "idempotency_keys",
    "unique_claims",
    "relay_position",
    "projection_checkpoints",
    "parked_events",
];

/// The PostgreSQL error code of `result`'s failure.
fn code<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()).unwrap_or_default(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

#[tokio::test]
async fn every_read_model_is_in_its_contexts_schema_and_no_other_context_can_read_it() {
    let app = TestApp::spawn().await;
    let item = json!({"sku": "S-1", "name": "Item", "price_cents": 500, "initial_stock": 3});
    let created = app.post("/api/v1/inventory/items", item).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let order = json!({"lines": [{"sku": "S-1", "quantity": 1}]});
    let placed = app.post("/api/v1/orders", order).await;
    assert_eq!(placed.status(), StatusCode::CREATED);

    // Every projection's tables are in its context's schema, none in `public`.
    for model in chronicle::contexts::read_models() {
        let (name, context) = (model.name(), model.context());
        for table in model.tables() {
            let schemas: Vec<String> =
                sqlx::query_scalar("SELECT schemaname::text FROM pg_tables WHERE tablename = $1")
                    .bind(table)
                    .fetch_all(&app.pool)
                    .await
                    .unwrap();
            assert_eq!(schemas, vec![context.to_owned()], "{name}'s table {table}");
        }
    }

    // Every context's event store is in its schema, and holds its own aggregates' events.
    for context in chronicle::contexts::names() {
        for table in STORE_TABLES {
            let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(format!("{context}.{table}"))
                .fetch_one(&app.pool)
                .await
                .unwrap();
            assert!(found.is_some(), "{context}.{table}");
        }
    }
    let stored: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT DISTINCT context, aggregate_type FROM ({}) e ORDER BY 1, 2",
        chronicle::contexts::names()
            .iter()
            .map(|c| format!("SELECT '{c}' AS context, aggregate_type FROM {c}.events"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    ))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // Each aggregate type in its own context's store, and only there.
    let home: std::collections::HashMap<&str, &str> = chronicle::contexts::contracts()
        .into_iter()
        .map(|c| (c.aggregate_type, c.context))
        .collect();
    for (context, aggregate_type) in &stored {
        assert_eq!(home[aggregate_type.as_str()], context, "{aggregate_type}");
    }
    for expected in ["inventory_item", "order", "user"] {
        assert!(
            stored.iter().any(|(_, t)| t == expected),
            "{expected}: {stored:?}"
        );
    }
    // Commerce's pool reads its orders, unqualified, as its code does.
    let commerce = app.databases().of(contexts::COMMERCE);
    eventually(
        "the order in commerce's read model",
        Duration::from_secs(20),
        || async {
            let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(commerce)
                .await
                .unwrap();
            (orders == 1).then_some(())
        },
    )
    .await;
    // Every other context's pool is refused them, by PostgreSQL: unqualified, the table is
    // not on its path (42P01); by its schema's name, its role may not use the schema (42501).
    for context in chronicle::contexts::names()
        .into_iter()
        .filter(|c| *c != contexts::COMMERCE)
    {
        let pool = app.databases().of(context);
        assert_eq!(
            code(
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
                    .fetch_one(pool)
                    .await
            ),
            "42P01",
            "{context} found commerce's orders on its path"
        );
        assert_eq!(
            code(
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM commerce.orders")
                    .fetch_one(pool)
                    .await
            ),
            "42501",
            "{context} read commerce's orders"
        );
        // Nor its events, nor those of the event store a plain pool uses (`public`).
        for table in ["commerce.events", "public.events"] {
            assert_eq!(
                code(
                    sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                        .fetch_one(pool)
                        .await
                ),
                "42501",
                "{context} read {table}"
            );
        }
        // Nor may it write there.
        assert_eq!(
            code(
                sqlx::query("DELETE FROM commerce.saga_order_deadlines")
                    .execute(pool)
                    .await
            ),
            "42501",
            "{context} wrote commerce's deadlines"
        );
    }
    // And commerce may not read identity's password hashes.
    assert_eq!(
        code(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM identity.credentials")
                .fetch_one(app.databases().of(contexts::COMMERCE))
                .await
        ),
        "42501"
    );
}

/// A database from before the contexts had schemas keeps its rows: the migrations move the
/// contexts' tables, the read models a projector made, each reader's checkpoint and parked
/// events, and each aggregate's events, snapshots, claims and unpublished outbox rows into
/// its context; idempotency records and the relay's position go to every context.
#[tokio::test]
async fn a_database_from_before_the_schemas_keeps_its_rows_in_the_contexts_schemas() {
    let db = TestDb::empty().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../commands/migrations");
    let mut before = sqlx::migrate::Migrator::new(dir).await.unwrap();
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 13)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    // As the old layout held them: a credential, a read model, a checkpoint, a parked event.
    sqlx::raw_sql(
        "INSERT INTO credentials (user_id, password_hash) VALUES ('u1', '$argon2id$x');
         CREATE TABLE orders (id text PRIMARY KEY, status text NOT NULL);
         INSERT INTO orders VALUES ('o1', 'paid');
         INSERT INTO projection_checkpoints (name, checkpoint) VALUES ('orders', 41), ('posts', 7),
             ('some-tool', 3);
         INSERT INTO parked_events (subscriber, stream_seq, subject, event_type, error, attempts)
             VALUES ('saga-orders', 12, 'events.commerce.order.o1', 'OrderPlaced', 'x', 1);
         INSERT INTO events VALUES ('order', 'o1', 1, 'OrderPlaced', '1', '{}', '{}'),
             ('user', 'u1', 1, 'UserRegistered', '1', '{}', '{}');
         INSERT INTO unique_claims (namespace, value, aggregate_type, aggregate_id)
             VALUES ('username', 'ada', 'user', 'u1');
         INSERT INTO outbox (subject, message_id, event_type, event_version, aggregate_sequence,
                             correlation_id, envelope)
             VALUES ('events.identity.user.u1', 'user:u1:1', 'UserRegistered', '1', 1,
                     gen_random_uuid(), '\\x00');
         INSERT INTO idempotency_keys (scope, key, request_hash, status, body)
             VALUES ('u1|POST /api/v1/orders', 'k1', '\\x00', 201, '{}');
         INSERT INTO relay_position (stream_seq, stream_created) VALUES (40, now());",
    )
    .execute(&pool)
    .await
    .unwrap();

    chronicle_commands::migrate(&pool, &chronicle::contexts::names())
        .await
        .unwrap();

    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM identity.credentials WHERE user_id = 'u1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(hash, "$argon2id$x");
    let status: String = sqlx::query_scalar("SELECT status FROM commerce.orders WHERE id = 'o1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "paid");
    let checkpoints: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT 'commerce', name, checkpoint FROM commerce.projection_checkpoints \
         UNION ALL SELECT 'blog', name, checkpoint FROM blog.projection_checkpoints \
         UNION ALL SELECT 'public', name, checkpoint FROM public.projection_checkpoints \
         ORDER BY 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        checkpoints,
        vec![
            ("commerce".into(), "orders".into(), 41),
            ("blog".into(), "posts".into(), 7),
            // A reader that is no context's stays where it was.
            ("public".into(), "some-tool".into(), 3),
        ]
    );
    let parked: Vec<(String, i64)> =
        sqlx::query_as("SELECT subscriber, stream_seq FROM commerce.parked_events")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(parked, vec![("saga-orders".into(), 12)]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM public.parked_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let moved: Vec<(String, String)> = sqlx::query_as(
        "SELECT 'commerce', aggregate_id FROM commerce.events \
         UNION ALL SELECT 'identity', aggregate_id FROM identity.events \
         UNION ALL SELECT 'public', aggregate_id FROM public.events ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        moved,
        vec![
            ("commerce".into(), "o1".into()),
            ("identity".into(), "u1".into())
        ]
    );
    let claim: String = sqlx::query_scalar("SELECT aggregate_id FROM identity.unique_claims")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(claim, "u1");
    let unpublished: Vec<String> = sqlx::query_scalar(
        "SELECT message_id FROM identity.outbox UNION ALL SELECT message_id FROM public.outbox",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(unpublished, ["user:u1:1"]);
    for context in chronicle::contexts::names() {
        let (keys, position): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {context}.idempotency_keys), \
                    (SELECT stream_seq FROM {context}.relay_position)"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((keys, position), (1, 40), "{context}");
    }
    // The old names are gone from `public`: nothing reads a stale copy.
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    assert_eq!(
        code(sqlx::query("SELECT 1 FROM orders").execute(&mut conn).await),
        "42P01"
    );
}

/// A context added to the list gets its schema, its event store and where its readers stand
/// at the next start (`migrate` with the list's names), and the contexts already there keep
/// their rows: a new context touches no migration.
#[tokio::test]
async fn a_context_added_to_the_list_gets_its_schema_and_store_and_the_others_keep_theirs() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    sqlx::query(
        "INSERT INTO identity.events VALUES ('user', 'u1', 1, 'UserRegistered', '1', '{}', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut names = chronicle::contexts::names();
    names.push("loyalty");
    // Twice: a start after the first finds everything in place.
    for _ in 0..2 {
        chronicle_commands::migrate(&pool, &names).await.unwrap();
    }
    for table in STORE_TABLES {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("loyalty.{table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(found, Some(format!("loyalty.{table}")));
    }
    // The new context's store takes events through its own pool, unqualified.
    let databases = chronicle_commands::Databases::new(pool.clone(), &names, 2, |_, o| o);
    sqlx::query("INSERT INTO events VALUES ('member', 'm1', 1, 'MemberJoined', '1', '{}', '{}')")
        .execute(databases.of("loyalty"))
        .await
        .unwrap();
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM identity.events), (SELECT count(*) FROM loyalty.events)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counts, (1, 1));
}

/// A context's own migrations run in its schema, recorded there (not in the event store's
/// record), once however many starts run them.
#[tokio::test]
async fn a_contexts_own_migrations_run_in_its_schema_once() {
    static LOYALTY_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("spine/loyalty_migrations");
    let loyalty = chronicle_host::Context {
        name: "loyalty",
        gateway: chronicle_gateway::Context {
            routes: chronicle_gateway::Routes::new,
            problems: &[],
            settings: |_| {},
            state: |_, _| {},
            beside: |_, _| None,
        },
        read_models: &[],
        processes: &[],
        contracts: Vec::new,
        settings: None,
        declare: |_| {},
        migrations: Some(&LOYALTY_MIGRATIONS),
    };
    let db = TestDb::empty().await;
    let pool = db.pool().await;
    let mut contexts = chronicle::contexts::CONTEXTS.to_vec();
    contexts.push(loyalty);
    for _ in 0..2 {
        chronicle_host::migrate(&pool, &contexts).await.unwrap();
    }
    let own: Vec<i64> = sqlx::query_scalar("SELECT version FROM loyalty._sqlx_migrations")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(own, [1]);
    let in_the_stores_record: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public._sqlx_migrations WHERE description = 'members'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_the_stores_record, 0);
    sqlx::query("INSERT INTO loyalty.members (id) VALUES ('m1')")
        .execute(&pool)
        .await
        .unwrap();
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass('public.members')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(found, None, "nothing of the context's outside its schema");
}
