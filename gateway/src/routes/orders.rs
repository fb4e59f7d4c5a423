//! `/api/v1/orders` and `/api/v1/coupons` (the API contract, Commerce: orders). Only an order's
//! customer sees it or acts on it.

use std::collections::BTreeMap;

use chronicle_commands::{CommandContext, CommandError};
use chronicle_commerce::{
    check_quantity, check_sku, AppliedCoupon, Canceller, Coupon, CouponCommand, InventoryItem,
    Order, OrderCommand, OrderError, OrderLine, OrderStatus, MAX_LINES,
};
use chronicle_projections::orders::{self, OrderView};
use serde::{Deserialize, Serialize};

use super::prelude::*;

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![
        place,
        list,
        get,
        pay,
        ship,
        cancel,
        create_coupon,
        get_coupon
    ]
}

/// Orders, coupons, the inventory and the cart.
fn commerce_routes() -> Routes {
    routes()
        .merge(super::inventory::routes())
        .merge(super::cart::routes())
}

/// The commerce context as the gateway hosts it.
pub const CONTEXT: Context = Context {
    beside: |_, _| None,
    routes: commerce_routes,
    problems: &[
        "cart_empty",
        "cart_full",
        "coupon_exhausted",
        "coupon_exists",
        "insufficient_stock",
        "invalid_state",
        "item_discontinued",
        "order_exists",
        "payment_declined",
        "payment_timeout",
        "reservation_committed",
        "reservation_mismatch",
        "reservation_released",
        "sku_exists",
        "stock_limit_exceeded",
        "unknown_reservation",
        "wrong_amount",
    ],
    settings: |_| {},
    state: |_, _| {},
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    lines: Vec<LineRequest>,
    coupon_code: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    sku: String,
    quantity: i64,
}

/// The lines as the customer asked, validated, a SKU given twice merged into one line.
fn requested_lines(lines: &[LineRequest], errors: &mut Vec<FieldError>) -> BTreeMap<String, u64> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        errors.push(FieldError::new("lines", format!("1 to {MAX_LINES} lines")));
    }
    let mut merged = BTreeMap::new();
    for (index, line) in lines.iter().enumerate() {
        let line_errors = FieldError::collect([
            check_sku(&line.sku),
            check_quantity("quantity", line.quantity),
        ]);
        if line_errors.is_empty() {
            // Bounded by 100 lines of 10^6: the domain refuses a merged line past its limit.
            *merged.entry(line.sku.clone()).or_insert(0u64) += line.quantity as u64;
        }
        errors.extend(
            line_errors
                .into_iter()
                .map(|e| FieldError::new(format!("lines[{index}].{}", e.field), e.message)),
        );
    }
    merged
}

#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", summary = "Place an order (the saga reserves its stock)", request_body = PlaceOrder, responses((status = 201, description = "201: {\"id\",\"version\",\"status\":\"pending\"}"), crate::schema::Problems))]
pub async fn place(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<PlaceOrder>,
) -> Result<Response, ApiError> {
    let request = body.value;
    let mut errors = Vec::new();
    let wanted = requested_lines(&request.lines, &mut errors);
    if let Some(code) = &request.coupon_code {
        validate_code(code, "coupon_code", &mut errors);
    }
    ApiError::check(errors)?;
    // The request is well formed; what it names must exist.
    let mut errors = Vec::new();
    let lines = price_lines(&state, wanted, &mut errors).await?;
    let coupon = applied_coupon(&state, request.coupon_code.as_deref(), &mut errors).await?;
    ApiError::check(errors)?;
    let ctx = respond::context(&caller, IfMatch(None), key, &body.raw);
    let order_id = uuid::Uuid::now_v7().to_string();
    let make = respond::id_version_status(201, OrderStatus::Pending.as_str());
    let command = place_command(&order_id, &caller.user_id, lines, coupon);
    respond::run::<Order>(
        &state,
        &order_id,
        command,
        &ctx,
        make,
        Some("/api/v1/orders"),
    )
    .await
}

/// The command placing order `order_id` for `customer`, priced: a checkout places its order
/// the same way.
pub(super) fn place_command(
    order_id: &str,
    customer: &str,
    lines: Vec<OrderLine>,
    coupon: Option<AppliedCoupon>,
) -> OrderCommand {
    OrderCommand::Place {
        order_id: order_id.to_owned(),
        customer_id: customer.to_owned(),
        lines,
        coupon,
    }
}

#[derive(Debug, Deserialize)]
pub struct ReadParams {
    min_version: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", summary = "One order with its status history (?min_version)", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"status\",\"lines\",\"total_cents\",\"history\",...}"), crate::schema::Problems))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "order")?;
    let read = state
        .freshness
        .read(
            params.min_version,
            |v: &OrderView| v.version as u64,
            || orders::get(state.db.of(contexts::COMMERCE), id),
        )
        .await?;
    let view = read
        .value
        .ok_or_else(|| ApiError::not_found(format!("no order with id {id}")))?;
    if view.customer_id != caller.user_id {
        return Err(ApiError::forbidden("only the order's customer may see it"));
    }
    let version = view.version;
    Ok(respond::read_model(view, version, read.consistency))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

const STATUSES: &[OrderStatus] = &[
    OrderStatus::Pending,
    OrderStatus::Reserved,
    OrderStatus::Paid,
    OrderStatus::Shipped,
    OrderStatus::Rejected,
    OrderStatus::Cancelled,
];

#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", summary = "The caller's orders, in cursor pages", responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<OrderView>>, ApiError> {
    if let Some(status) = &params.status {
        if !STATUSES.iter().any(|s| s.as_str() == status) {
            return Err(ApiError::validation(vec![FieldError::new(
                "status",
                "one of pending, reserved, paid, shipped, rejected, cancelled",
            )]));
        }
    }
    let request = PageRequest::new(params.limit, params.cursor.as_deref())?;
    let items = orders::list(
        state.db.of(contexts::COMMERCE),
        &caller.user_id,
        params.status.as_deref(),
        request.after.as_deref(),
        request.fetch(),
    )
    .await?;
    Ok(Json(request.page(items, |order| order.id.clone())))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pay {
    amount_cents: i64,
}

/// Pays an order in three steps, so that money never moves without an event saying so:
/// the request is recorded (customer, state and amount checked), the provider is charged
/// with the order id as its idempotency key, and the outcome is recorded. A charge that
/// lands on an order cancelled meanwhile is recorded as owed back, and the saga refunds it.
#[utoipa::path(post, path = "/api/v1/orders/{id}/pay", tag = "orders", summary = "Pay a reserved order", params(("id" = String, Path)), request_body = Pay, responses((status = 200, description = "200: {\"id\",\"status\":\"paid\",\"version\"}"), crate::schema::Problems))]
pub async fn pay(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
    body: JsonBody<Pay>,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "order")?;
    let amount_cents = body.value.amount_cents;
    let ctx = respond::context(&caller, if_match, key, &body.raw);
    let make = respond::id_version_status(200, OrderStatus::Paid.as_str());
    if let Some(key) = &ctx.idempotency {
        if let Some(done) = state.commands.replay::<Order>(key).await? {
            return Ok(respond::executed(done, make));
        }
    }
    // The steps before the last carry neither the key (it records the final answer) nor,
    // after the first, `If-Match` (their own events move the version).
    let step = CommandContext {
        idempotency: None,
        ..ctx.clone()
    };
    let requested = OrderCommand::Pay {
        by: caller.user_id.clone(),
        amount_cents,
    };
    state
        .commands
        .execute::<Order>(id, requested, &(), &step)
        .await?;
    let step = CommandContext {
        expected_version: None,
        ..step
    };
    let receipt = match state
        .contexts
        .get::<chronicle_commerce::OrderServices>()
        .payments
        .charge(id, amount_cents)
        .await
    {
        Ok(receipt) => receipt,
        Err(failure) => {
            let failed = OrderCommand::RecordPaymentFailure {
                reason: failure.to_string(),
            };
            state
                .commands
                .execute::<Order>(id, failed, &(), &step)
                .await?;
            return Err(CommandError::Rejected(OrderError::Payment(failure)).into());
        }
    };
    let charged = OrderCommand::RecordCharge {
        payment_id: receipt.payment_id.clone(),
        amount_cents,
    };
    let last = CommandContext {
        expected_version: None,
        ..ctx
    };
    match state
        .commands
        .execute_with_response::<Order>(id, charged, &(), &last, &make)
        .await
    {
        Ok(executed) => Ok(respond::executed(executed, make)),
        Err(CommandError::Rejected(OrderError::InvalidState { status, .. })) => {
            let late = OrderCommand::RecordLateCharge {
                payment_id: receipt.payment_id,
                amount_cents,
            };
            state
                .commands
                .execute::<Order>(id, late, &(), &step)
                .await?;
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_state",
                format!(
                    "the order became {status} while it was being paid; the charge is refunded"
                ),
            ))
        }
        Err(other) => Err(other.into()),
    }
}

#[utoipa::path(post, path = "/api/v1/orders/{id}/ship", tag = "orders", summary = "Mark a paid order shipped (its customer only)", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"status\",\"version\"}", body = crate::schema::IdStatusVersion), crate::schema::Problems))]
pub async fn ship(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    let command = OrderCommand::Ship {
        by: caller.user_id.clone(),
    };
    let ctx = (caller, if_match, key);
    without_body(&state, &id, command, ctx, OrderStatus::Shipped).await
}

#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", summary = "Cancel an order (releases its stock)", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"status\",\"version\"}", body = crate::schema::IdStatusVersion), crate::schema::Problems))]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    let command = OrderCommand::Cancel {
        by: Canceller::Customer(caller.user_id.clone()),
    };
    let ctx = (caller, if_match, key);
    without_body(&state, &id, command, ctx, OrderStatus::Cancelled).await
}

/// `POST /api/v1/orders/{id}/{action}`, a command that takes no body.
async fn without_body(
    state: &AppState,
    id: &str,
    command: OrderCommand,
    (caller, if_match, key): (Caller, IfMatch, IdempotencyKeyHeader),
    after: OrderStatus,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(id, "order")?;
    let ctx = respond::context(&caller, if_match, key, b"");
    order_command(state, id, command, &ctx, after).await
}

async fn order_command(
    state: &AppState,
    id: &str,
    command: OrderCommand,
    ctx: &chronicle_commands::CommandContext,
    after: OrderStatus,
) -> Result<Response, ApiError> {
    let make = respond::id_version_status(200, after.as_str());
    respond::run::<Order>(state, id, command, ctx, make, None).await
}

/// A coupon code is its aggregate id, so a NATS subject token.
/// A coupon code is an aggregate id too: the SKU rule, under the request's field name.
/// `wanted` (SKU and quantity), each line priced at its item's price now (the saga then
/// reserves the stock): an unknown SKU is a field error in `errors`, a discontinued item
/// refuses the whole order (409 `item_discontinued`).
pub(super) async fn price_lines(
    state: &AppState,
    wanted: impl IntoIterator<Item = (String, u64)>,
    errors: &mut Vec<FieldError>,
) -> Result<Vec<OrderLine>, ApiError> {
    let mut lines = Vec::new();
    for (sku, quantity) in wanted {
        let item = state.commands.state::<InventoryItem>(&sku).await?.state;
        if !item.exists() {
            errors.push(FieldError::new("lines", format!("no item with SKU {sku}")));
            continue;
        }
        if item.is_discontinued() {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "item_discontinued",
                format!("item {sku} is discontinued: it can no longer be ordered"),
            ));
        }
        lines.push(OrderLine {
            sku,
            quantity,
            unit_price_cents: item.price_cents(),
        });
    }
    Ok(lines)
}

/// The coupon `code` names, as an order applies it: an unknown code is a field error in
/// `errors`; an exhausted one refuses the order now (409 `coupon_exhausted`; a race for the
/// last redemption is settled by the saga, which rejects the losers).
pub(super) async fn applied_coupon(
    state: &AppState,
    code: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Result<Option<AppliedCoupon>, ApiError> {
    let Some(code) = code else {
        return Ok(None);
    };
    let coupon = state.commands.state::<Coupon>(code).await?.state;
    if !coupon.exists() {
        errors.push(FieldError::new("coupon_code", "no such coupon"));
        Ok(None)
    } else if coupon.is_exhausted() {
        Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "coupon_exhausted",
            "the coupon has no redemptions left",
        ))
    } else {
        Ok(Some(AppliedCoupon {
            code: code.to_owned(),
            percent_off: coupon.percent_off(),
        }))
    }
}

pub(super) fn validate_code(code: &str, field: &str, errors: &mut Vec<FieldError>) {
    if let Err(invalid) = check_sku(code) {
        errors.push(FieldError::new(field, invalid.message));
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCoupon {
    code: String,
    percent_off: i64,
    max_redemptions: i64,
}

#[utoipa::path(post, path = "/api/v1/coupons", tag = "orders", summary = "Create a coupon (staff)", request_body = CreateCoupon, responses((status = 201, description = "201: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn create_coupon(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<CreateCoupon>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let coupon = body.value;
    let mut errors = Vec::new();
    validate_code(&coupon.code, "code", &mut errors);
    if !(1..=100).contains(&coupon.percent_off) {
        errors.push(FieldError::new("percent_off", "1 to 100"));
    }
    if !(1..=i64::from(u32::MAX)).contains(&coupon.max_redemptions) {
        errors.push(FieldError::new("max_redemptions", "at least 1"));
    }
    ApiError::check(errors)?;
    let ctx = respond::context(&caller, IfMatch(None), key, &body.raw);
    let make = respond::id_and_version(201);
    respond::run::<Coupon>(
        &state,
        &coupon.code,
        CouponCommand::Create {
            code: coupon.code.clone(),
            percent_off: coupon.percent_off as u8,
            max_redemptions: coupon.max_redemptions as u32,
        },
        &ctx,
        make,
        None,
    )
    .await
}

#[derive(Debug, Serialize)]
struct CouponView {
    code: String,
    percent_off: u8,
    max_redemptions: u32,
    redemptions: u32,
    version: u64,
}

/// A coupon's terms and how many redemptions it has given, from the write side (a coupon is
/// a handful of events; there is no read model for it).
#[utoipa::path(get, path = "/api/v1/coupons/{code}", tag = "orders", summary = "A coupon and its redemptions", params(("code" = String, Path)), responses((status = 200, description = "200: {\"code\",\"percent_off\",\"max_redemptions\",\"redemptions\",\"version\"}"), crate::schema::Problems))]
pub async fn get_coupon(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(code): ApiPath<String>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    validate_code(&code, "code", &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::not_found(format!("no coupon with code {code}")));
    }
    let loaded = state.commands.state::<Coupon>(&code).await?;
    if !loaded.state.exists() {
        return Err(ApiError::not_found(format!("no coupon with code {code}")));
    }
    let coupon = loaded.state;
    let view = CouponView {
        code: coupon.code().to_owned(),
        percent_off: coupon.percent_off(),
        max_redemptions: coupon.max_redemptions(),
        redemptions: coupon.redemptions(),
        version: loaded.version,
    };
    Ok(respond::read_model(view, loaded.version as i64, None))
}
