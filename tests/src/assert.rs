//! Assertions on what a client sees, shared by every context's tests: a problem+json
//! answer, a validation problem's fields, a read model equal to its rebuild.

use reqwest::{Response, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

/// Asserts a problem+json answer with `status` and `code`; returns the problem object.
pub async fn problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "errors are problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

/// Asserts a 422 `validation_failed` problem and returns the fields it names, in order.
/// The `id` of what a `201 Created` answer made.
///
/// # Panics
/// When the answer is not a 201 with an `id` (the message shows its body).
pub async fn created_id(response: Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON body");
    body["id"].as_str().expect("an id").to_owned()
}

pub async fn invalid_fields(response: Response) -> Vec<String> {
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    body["errors"]
        .as_array()
        .expect("a validation problem lists its errors")
        .iter()
        .map(|e| {
            e["field"]
                .as_str()
                .expect("each error names its field")
                .to_owned()
        })
        .collect()
}

/// The index definitions of `tables` in schema `context`, by name: a rebuild builds most of
/// them only after it filled the tables, and must leave each as it was.
pub async fn indexes_of(pool: &PgPool, context: &str, tables: &[&str]) -> Vec<String> {
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = ANY($2) \
         ORDER BY indexname",
    )
    .bind(context)
    .bind(tables)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!indexes.is_empty(), "{context}.{tables:?} have indexes");
    indexes
}

/// The indexes of `tables`, then every row of them as JSON text, sorted: a read model's
/// whole content.
async fn rows_of(pool: &PgPool, context: &str, tables: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = indexes_of(pool, context, tables).await;
    for table in tables {
        let mut rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM {context}.{table} t ORDER BY 1"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        all.append(&mut rows);
    }
    all
}

/// Damages read model `projection` with `damage` (SQL), replays it from the log in batches
/// of `batch`, and asserts its `tables` hold exactly the rows they held before, byte for byte.
pub async fn assert_replays_byte_for_byte(
    app: &crate::TestApp,
    projection: &str,
    tables: &[&str],
    damage: &str,
    batch: usize,
) {
    let context = chronicle::contexts::read_model(projection)
        .expect("a projection")
        .context();
    let live = rows_of(&app.pool, context, tables).await;
    sqlx::query(damage).execute(&app.pool).await.unwrap();
    assert_ne!(
        rows_of(&app.pool, context, tables).await,
        live,
        "the damage shows"
    );
    app.replay(projection, chronicle_projections::ReplayFrom::Log, batch)
        .await;
    assert_eq!(rows_of(&app.pool, context, tables).await, live);
}
