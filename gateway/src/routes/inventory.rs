//! `/api/v1/inventory/items` (API.md, Commerce: inventory).

use chronicle_commerce::{
    check_initial_stock, check_item_name, check_price, check_quantity, check_sku, InventoryCommand,
    InventoryItem,
};
use chronicle_projections::inventory::{self, InventoryView};
use serde::Deserialize;

use super::prelude::*;

/// This module's routes (API.md).
pub(super) fn routes() -> Routes {
    documented![create, list, get, receive]
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
    let executed = state
        .commands
        .execute_with_response::<InventoryItem>(
            &item.sku,
            InventoryCommand::Create {
                sku: item.sku.clone(),
                name: item.name,
                price_cents: item.price_cents,
                initial_stock: item.initial_stock as u64,
            },
            &(),
            &ctx,
            &make,
        )
        .await?;
    Ok(respond::created(executed, make, "/api/v1/inventory/items"))
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
    caller: Caller,
    if_match: IfMatch,
    key: IdempotencyKeyHeader,
    body: JsonBody<Receive>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    ApiError::check(FieldError::collect([
        check_sku(&sku),
        check_quantity("quantity", body.value.quantity),
    ]))?;
    let ctx = respond::context(&caller, if_match, key, &body.raw);
    let make = respond::id_and_version(200);
    let executed = state
        .commands
        .execute_with_response::<InventoryItem>(
            &sku,
            InventoryCommand::Receive {
                quantity: body.value.quantity as u64,
            },
            &(),
            &ctx,
            &make,
        )
        .await?;
    Ok(respond::executed(executed, make))
}

/// `?min_version=N` of a single-aggregate read (API.md Read-your-writes).
#[derive(Debug, Deserialize)]
pub struct ReadParams {
    pub(crate) min_version: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/inventory/items/{sku}", tag = "inventory", summary = "One item: on hand, reserved, available (?min_version)", params(("sku" = String, Path)), responses((status = 200, description = "200: {\"sku\",\"name\",\"price_cents\",\"on_hand\",\"reserved\",\"available\",\"version\"}"), crate::schema::Problems))]
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
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/inventory/items", tag = "inventory", summary = "Items, in cursor pages", responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<InventoryView>>, ApiError> {
    let request = PageRequest::new(params.limit, params.cursor.as_deref())?;
    let items = inventory::list(
        state.db.of(contexts::COMMERCE),
        params.low_stock_below,
        request.after.as_deref(),
        request.fetch(),
    )
    .await?;
    Ok(Json(request.page(items, |item| item.sku.clone())))
}
