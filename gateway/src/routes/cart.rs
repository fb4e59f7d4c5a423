//! `/api/v1/cart` (the API contract, "Catalog edits and the cart"): the caller's own cart, the only
//! one a caller can reach (no route names a cart: it is the caller's).

use chronicle_commands::CommandError;
use chronicle_commerce::{
    check_quantity, check_sku, Cart, CartCommand, InventoryItem, Order, OrderStatus,
};
use chronicle_projections::carts::{self, CartView};
use serde::Deserialize;

use super::prelude::*;

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![get, set_line, remove_line, empty, checkout]
}

/// `?min_version=N` (the API contract Read-your-writes).
#[derive(Debug, Deserialize)]
pub struct ReadParams {
    min_version: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/cart", tag = "cart", summary = "The caller's cart, priced now (?min_version)", responses((status = 200, description = "200: {\"lines\":[{\"sku\",\"name\",\"quantity\",\"unit_price_cents\",\"line_total_cents\",\"available\",\"discontinued\"}],\"total_cents\",\"version\"}; an empty cart at version 0 when never used"), crate::schema::Problems))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Response, ApiError> {
    let read = state
        .freshness
        .read(
            params.min_version,
            |v: &CartView| v.version as u64,
            || async {
                carts::get(state.db.of(contexts::COMMERCE), &caller.user_id)
                    .await
                    .map(Some)
            },
        )
        .await?;
    let cart = read.value.unwrap_or_default();
    let version = cart.version;
    Ok(respond::read_model(cart, version, read.consistency))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLine {
    /// 1 to 1,000,000.
    quantity: i64,
}

#[utoipa::path(put, path = "/api/v1/cart/items/{sku}", tag = "cart", summary = "Set the line of an item in the caller's cart (If-Match)", params(("sku" = String, Path)), request_body = SetLine, responses((status = 200, description = "200: {\"version\"}"), crate::schema::Problems))]
pub async fn set_line(
    State(state): State<AppState>,
    ApiPath(sku): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
    body: JsonBody<SetLine>,
) -> Result<Response, ApiError> {
    ApiError::check(FieldError::collect([
        check_sku(&sku),
        check_quantity("quantity", body.value.quantity),
    ]))?;
    // Only what is for sale goes in a cart.
    let item = state.commands.state::<InventoryItem>(&sku).await?.state;
    if !item.exists() {
        return Err(ApiError::not_found(format!("no item with SKU {sku}")));
    }
    if item.is_discontinued() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "item_discontinued",
            format!("item {sku} is discontinued: it can no longer be put in a cart"),
        ));
    }
    let command = CartCommand::SetLine {
        sku,
        quantity: body.value.quantity as u64,
    };
    cart_command(&state, (caller, if_match, key), &body.raw, command).await
}

#[utoipa::path(delete, path = "/api/v1/cart/items/{sku}", tag = "cart", summary = "Take an item's line out of the caller's cart", params(("sku" = String, Path)), responses((status = 200, description = "200: {\"version\"}"), crate::schema::Problems))]
pub async fn remove_line(
    State(state): State<AppState>,
    ApiPath(sku): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    ApiError::check(FieldError::collect([check_sku(&sku)]))?;
    let command = CartCommand::RemoveLine { sku };
    cart_command(&state, (caller, if_match, key), b"", command).await
}

#[utoipa::path(delete, path = "/api/v1/cart", tag = "cart", summary = "Empty the caller's cart", responses((status = 200, description = "200: {\"version\"}"), crate::schema::Problems))]
pub async fn empty(
    State(state): State<AppState>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    cart_command(&state, (caller, if_match, key), b"", CartCommand::Empty).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkout {
    coupon_code: Option<String>,
}

/// How often a checkout prices the cart again when it changed between the read and the
/// commit (another tab setting a line), before it answers 409.
const CHECKOUT_ATTEMPTS: u32 = 3;

#[utoipa::path(post, path = "/api/v1/cart/checkout", tag = "cart", summary = "Place one order from the caller's cart and empty it, as one step (If-Match: the cart's version)", request_body = Checkout, responses((status = 201, description = "201: {\"id\",\"version\",\"status\":\"pending\"}: the order"), crate::schema::Problems))]
pub async fn checkout(
    State(state): State<AppState>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
    body: JsonBody<Checkout>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    if let Some(code) = &body.value.coupon_code {
        super::orders::validate_code(code, "coupon_code", &mut errors);
    }
    ApiError::check(errors)?;
    let mut ctx = respond::context(&caller, if_match, key, &body.raw);
    let make = respond::id_version_status(201, OrderStatus::Pending.as_str());
    // A checkout asked for again answers as the first did, before the cart (now empty) is
    // looked at.
    if let Some(key) = &ctx.idempotency {
        if let Some(done) = state.commands.replay::<Order>(key).await? {
            return Ok(respond::created(done, make, "/api/v1/orders"));
        }
    }
    let mut attempt = 1;
    loop {
        // The order is priced from the cart at one version, and placed only if the cart is
        // still at it when both commit.
        let cart = state.commands.fresh_state::<Cart>(&caller.user_id).await?;
        if let IfMatch(Some(expected)) = if_match {
            if expected != cart.version {
                return Err(
                    CommandError::<chronicle_commerce::CartError>::VersionMismatch {
                        expected,
                        actual: cart.version,
                    }
                    .into(),
                );
            }
        }
        if cart.state.lines().is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "cart_empty",
                "the cart is empty: there is nothing to check out",
            ));
        }
        let mut errors = Vec::new();
        let wanted: Vec<(String, u64)> = cart
            .state
            .lines()
            .iter()
            .map(|(sku, quantity)| (sku.clone(), *quantity))
            .collect();
        let lines = super::orders::price_lines(&state, wanted, &mut errors).await?;
        let coupon =
            super::orders::applied_coupon(&state, body.value.coupon_code.as_deref(), &mut errors)
                .await?;
        ApiError::check(errors)?;
        ctx.expected_version = Some(cart.version);
        let order_id = uuid::Uuid::now_v7().to_string();
        let placed = state
            .commands
            .execute_together::<Cart, Order>(
                (
                    &caller.user_id,
                    CartCommand::CheckOut {
                        order_id: order_id.clone(),
                    },
                    &(),
                ),
                (
                    &order_id,
                    super::orders::place_command(&order_id, &caller.user_id, lines, coupon),
                    &(),
                ),
                &ctx,
                &make,
            )
            .await;
        match placed {
            Ok(executed) => return Ok(respond::created(executed, make, "/api/v1/orders")),
            // The cart changed after it was priced: price it again, unless the client
            // named the version it meant.
            Err(CommandError::VersionMismatch { .. })
                if if_match.0.is_none() && attempt < CHECKOUT_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `command` on the caller's cart: 200 `{"version"}`.
async fn cart_command(
    state: &AppState,
    (caller, if_match, key): (Caller, IfMatch, IdempotencyKeyHeader),
    raw: &[u8],
    command: CartCommand,
) -> Result<Response, ApiError> {
    let ctx = respond::context(&caller, if_match, key, raw);
    let make = |c: &chronicle_commands::Committed| chronicle_commands::StoredResponse {
        status: 200,
        body: serde_json::json!({"version": c.version}),
    };
    respond::run::<Cart>(state, &caller.user_id, command, &ctx, make, None).await
}
