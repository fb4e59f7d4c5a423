//! `/api/v1/inventory/items` (the API contract, Commerce: inventory).

use chronicle_commerce::{
    check_description, check_initial_stock, check_item_name, check_price, check_quantity,
    check_sku, InventoryCommand, InventoryItem,
};
use chronicle_projections::inventory::{self, CatalogFilter, InventoryView};
use serde::Deserialize;

use super::prelude::*;

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![create, list, get, receive, change, discontinue]
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateItem {
    sku: String,
    name: String,
    price_cents: i64,
    initial_stock: i64,
}

#[utoipa::path(post, path = "/api/v1/inventory/items", tag = "inventory", summary = "Create an item (staff)", request_body = CreateItem, responses((status = 201, description = "201: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<CreateItem>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let item = body.value;
    ApiError::check(FieldError::collect([
        check_sku(&item.sku),
        check_item_name(&item.name),
        check_price(item.price_cents),
        check_initial_stock(item.initial_stock),
    ]))?;
    let ctx = respond::context(&caller, IfMatch(None), key, &body.raw);
    let make = respond::id_and_version(201);
    respond::run::<InventoryItem>(
        &state,
        &item.sku,
        InventoryCommand::Create {
            sku: item.sku.clone(),
            name: item.name,
            price_cents: item.price_cents,
            initial_stock: item.initial_stock as u64,
        },
        &ctx,
        make,
        Some("/api/v1/inventory/items"),
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Receive {
    quantity: i64,
}

#[utoipa::path(post, path = "/api/v1/inventory/items/{sku}/receive", tag = "inventory", summary = "Receive stock (staff)", params(("sku" = String, Path)), request_body = Receive, responses((status = 200, description = "200: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn receive(
    State(state): State<AppState>,
    ApiPath(sku): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
    body: JsonBody<Receive>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    ApiError::check(FieldError::collect([
        check_sku(&sku),
        check_quantity("quantity", body.value.quantity),
    ]))?;
    let command = InventoryCommand::Receive {
        quantity: body.value.quantity as u64,
    };
    item_command(&state, &sku, (caller, if_match, key), &body.raw, command).await
}

/// Runs `command` on the item `sku` for `caller`: 200 `{"id","version"}`.
async fn item_command(
    state: &AppState,
    sku: &str,
    (caller, if_match, key): (Caller, IfMatch, IdempotencyKeyHeader),
    raw: &[u8],
    command: InventoryCommand,
) -> Result<Response, ApiError> {
    let ctx = respond::context(&caller, if_match, key, raw);
    let make = respond::id_and_version(200);
    respond::run::<InventoryItem>(state, sku, command, &ctx, make, None).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeItem {
    name: Option<String>,
    price_cents: Option<i64>,
    /// At most 2,000 characters; empty removes it.
    description: Option<String>,
}

#[utoipa::path(patch, path = "/api/v1/inventory/items/{sku}", tag = "inventory", summary = "Change an item's name, price or description (staff, If-Match)", params(("sku" = String, Path)), request_body = ChangeItem, responses((status = 200, description = "200: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn change(
    State(state): State<AppState>,
    ApiPath(sku): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
    body: JsonBody<ChangeItem>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let change = body.value;
    if change.name.is_none() && change.price_cents.is_none() && change.description.is_none() {
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            "give at least one of name, price_cents, description",
        )]));
    }
    ApiError::check(FieldError::collect([
        check_sku(&sku),
        change.name.as_deref().map_or(Ok(()), check_item_name),
        change.price_cents.map_or(Ok(()), check_price),
        change
            .description
            .as_deref()
            .map_or(Ok(()), check_description),
    ]))?;
    let command = InventoryCommand::Change {
        name: change.name,
        price_cents: change.price_cents,
        description: change.description,
    };
    item_command(&state, &sku, (caller, if_match, key), &body.raw, command).await
}

#[utoipa::path(post, path = "/api/v1/inventory/items/{sku}/discontinue", tag = "inventory", summary = "Withdraw an item: readable, no longer put in a cart or ordered (staff)", params(("sku" = String, Path)), responses((status = 200, description = "200: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn discontinue(
    State(state): State<AppState>,
    ApiPath(sku): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    ApiError::check(FieldError::collect([check_sku(&sku)]))?;
    let command = InventoryCommand::Discontinue;
    item_command(&state, &sku, (caller, if_match, key), b"", command).await
}

/// `?min_version=N` of a single-aggregate read (the API contract Read-your-writes).
#[derive(Debug, Deserialize)]
pub struct ReadParams {
    pub(crate) min_version: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/inventory/items/{sku}", tag = "inventory", summary = "One item: on hand, reserved, available (?min_version)", params(("sku" = String, Path)), responses((status = 200, description = "200: {\"sku\",\"name\",\"price_cents\",\"description\",\"discontinued\",\"on_hand\",\"reserved\",\"available\",\"version\"}"), crate::schema::Problems))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(sku): ApiPath<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Response, ApiError> {
    // Not a SKU (a NUL, a megabyte): no such item, and nothing asked of the database.
    if check_sku(&sku).is_err() {
        return Err(ApiError::not_found(format!(
            "no inventory item with SKU {sku}"
        )));
    }
    let read = state
        .freshness
        .read(
            params.min_version,
            |v: &InventoryView| v.version as u64,
            || inventory::get(state.db.of(contexts::COMMERCE), &sku),
        )
        .await?;
    let view = read
        .value
        .ok_or_else(|| ApiError::not_found(format!("no inventory item with SKU {sku}")))?;
    let version = view.version;
    Ok(respond::read_model(view, version, read.consistency))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    low_stock_below: Option<i64>,
    /// Words of the name or description.
    q: Option<String>,
    /// Staff: discontinued items too.
    discontinued: Option<bool>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Longest `?q=` of the catalog, in characters.
const MAX_QUERY: usize = 200;

#[utoipa::path(get, path = "/api/v1/inventory/items", tag = "inventory", summary = "The catalog, in cursor pages (?q words of the name or description, ?low_stock_below, ?discontinued=true for staff)", params(("q" = Option<String>, Query, description = "words of the name or description (web search syntax)"), ("low_stock_below" = Option<i64>, Query), ("discontinued" = Option<bool>, Query, description = "staff: discontinued items too")), responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<InventoryView>>, ApiError> {
    let request = PageRequest::new(params.limit, params.cursor.as_deref())?;
    let with_discontinued = params.discontinued == Some(true);
    if with_discontinued {
        caller.require_staff()?;
    }
    if let Some(q) = &params.q {
        ApiError::check(FieldError::collect([chronicle_schemas::limits::text(
            "q", q, 0, MAX_QUERY,
        )]))?;
    }
    let filter = CatalogFilter {
        low_stock_below: params.low_stock_below,
        words: params.q.as_deref().filter(|q| !q.trim().is_empty()),
        with_discontinued,
    };
    let items = inventory::list(
        state.db.of(contexts::COMMERCE),
        &filter,
        request.after.as_deref(),
        request.fetch(),
    )
    .await?;
    Ok(Json(request.page(items, |item| item.sku.clone())))
}
