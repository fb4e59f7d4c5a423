//! `/api/v1/auth/*` and `/api/v1/users/*` (the API contract, Identity).

use chronicle_commands::Credentials;
use chronicle_commands::{Executed, StoredResponse, UniqueClaim};
use chronicle_identity::{check_display_name, check_username, User, UserCommand};
use chronicle_projections::users;
use chronicle_schemas::limits::Invalid;
use serde::Deserialize;
use serde_json::json;

use super::prelude::*;
use crate::{
    auth::{hash_password, verify_password, CUSTOMER, STAFF},
    extract::RequestId,
};

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![register, login, find_users, get_user, change_profile]
}

/// How the identity routes are configured.
#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    /// Usernames made staff at login (`CHRONICLE_STAFF_USERS`; `*` is everyone).
    pub staff_users: Vec<String>,
}

/// The identity context as the gateway hosts it.
pub const CONTEXT: Context = Context {
    beside: |_, _| None,
    routes,
    problems: &[
        "already_registered",
        "invalid_credentials",
        "username_taken",
    ],
    settings: |s| {
        s.declare::<IdentityConfig>();
    },
    state: |_, _| {},
};

/// Longest password accepted: argon2 would hash anything, and a megabyte of it costs CPU.
const MAX_PASSWORD: usize = 1024;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    username: String,
    password: String,
    display_name: String,
}

// A hand-written Debug: the password must never reach a log line.
impl std::fmt::Debug for Register {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Register")
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .finish_non_exhaustive()
    }
}

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "identity", summary = "Sign up", request_body = Register, responses((status = 201, description = "201: {\"user_id\"}"), crate::schema::Problems))]
pub async fn register(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    key: IdempotencyKeyHeader,
    body: JsonBody<Register>,
) -> Result<Response, ApiError> {
    let form = body.value;
    let password = if form.password.chars().count() < 8 || form.password.len() > MAX_PASSWORD {
        Err(Invalid::new("password", "8 characters or more"))
    } else {
        Ok(())
    };
    let errors = FieldError::collect([
        check_username(&form.username),
        password,
        check_display_name(&form.display_name),
    ]);
    ApiError::check(errors)?;
    let user_id = uuid::Uuid::now_v7().to_string();
    // The hash is stored first under the new id; the username is claimed with the
    // registration event. If the claim fails the row is removed; if the process dies in
    // between, the row belongs to an id nothing refers to.
    let hash = hash_password(form.password).await?;
    let credentials = Credentials::new(state.db.of(contexts::IDENTITY));
    credentials.store_hash(&user_id, &hash).await?;
    // The key's scope is the route alone (the caller is anonymous): the user id is made
    // afresh for every request, so it cannot be part of it, or a retry would never match.
    let mut ctx = respond::anonymous_context(request_id, None, IfMatch(None), key, &body.raw);
    ctx.actor = Some(user_id.clone());
    ctx.claims = vec![UniqueClaim::new("username", form.username.clone())];
    let id = user_id.clone();
    let respond = move |_: &chronicle_commands::Committed| StoredResponse {
        status: 201,
        body: json!({ "user_id": id }),
    };
    let outcome = state
        .commands
        .execute_with_response::<User>(
            &user_id,
            UserCommand::Register {
                username: form.username,
                display_name: form.display_name,
            },
            &user_id,
            &ctx,
            &respond,
        )
        .await;
    if !matches!(outcome, Ok(Executed::Committed(_))) {
        credentials.remove(&user_id).await?;
    }
    Ok(respond::executed(outcome?, respond))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "identity", summary = "Sign in: a bearer token", request_body = Login, responses((status = 200, description = "200: {\"token\",\"user_id\",\"expires_at\"}"), crate::schema::Problems))]
pub async fn login(
    State(state): State<AppState>,
    body: JsonBody<Login>,
) -> Result<Response, ApiError> {
    let form = body.value;
    if form.password.len() > MAX_PASSWORD {
        return Err(invalid_credentials());
    }
    // A name no one can hold (a NUL, which PostgreSQL's text refuses, or a megabyte) is an
    // unknown user: not asked of the database, and answered like any other wrong login.
    let row: Option<(String, String)> = if check_username(&form.username).is_ok() {
        Credentials::new(state.db.of(contexts::IDENTITY))
            .of_username(&form.username)
            .await?
    } else {
        None
    };
    let (user_id, hash) = match row {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    if !verify_password(form.password, hash).await? {
        return Err(invalid_credentials());
    }
    let user_id = user_id.ok_or_else(invalid_credentials)?;
    let roles = roles_of(&state, &user_id, &form.username).await?;
    let (token, expires_at) = state.auth.issue(&user_id, roles)?;
    Ok(Json(json!({"token": token, "user_id": user_id, "expires_at": expires_at})).into_response())
}

/// `customer`, and `staff` when `CHRONICLE_STAFF_USERS` names the user (or is `*`) or
/// `chronicle users grant` granted it.
async fn roles_of(
    state: &AppState,
    user_id: &str,
    username: &str,
) -> Result<Vec<String>, ApiError> {
    let mut roles = vec![CUSTOMER.to_owned()];
    let listed = state
        .config
        .contexts
        .get::<IdentityConfig>()
        .staff_users
        .iter()
        .any(|u| u == "*" || u == username);
    let granted = Credentials::new(state.db.of(contexts::IDENTITY))
        .has_role(user_id, STAFF)
        .await?;
    if listed || granted {
        roles.push(STAFF.to_owned());
    }
    Ok(roles)
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "the username or password is wrong",
    )
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "identity", summary = "A public profile (?min_version)", params(("id" = String, Path)), responses((status = 200, description = "200: {\"user_id\",\"username\",\"display_name\",\"created_at\"}"), crate::schema::Problems))]
pub async fn get_user(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<super::inventory::ReadParams>,
) -> Result<Response, ApiError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::not_found("no such user"));
    }
    let read = state
        .freshness
        .read(
            params.min_version,
            |v: &users::UserView| v.version as u64,
            || users::get(state.db.of(contexts::IDENTITY), &id),
        )
        .await?;
    let view = read
        .value
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let version = view.version;
    Ok(respond::read_model(view, version, read.consistency))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindUsers {
    /// The exact username.
    username: String,
}

/// `GET /api/v1/users?username=`: the public profile of the user with that exact username,
/// so a person can be found by the name they told you (to add them to a room, say). A page
/// of at most one; a name no one can hold matches no one and is not asked of the database.
#[utoipa::path(get, path = "/api/v1/users", tag = "identity", summary = "Find a user by exact username (?username)", params(FindUsers), responses((status = 200, description = "200: {\"items\":[{\"user_id\",\"username\",\"display_name\",\"created_at\"}],\"next_cursor\":null}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn find_users(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(query): ApiQuery<FindUsers>,
) -> Result<Response, ApiError> {
    let found = if check_username(&query.username).is_ok() {
        users::by_username(state.db.of(contexts::IDENTITY), &query.username)
            .await
            .map_err(ApiError::internal)?
    } else {
        None
    };
    Ok(
        Json(json!({ "items": found.into_iter().collect::<Vec<_>>(), "next_cursor": null }))
            .into_response(),
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeProfile {
    display_name: String,
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "identity", summary = "Change one's own profile (If-Match)", params(("id" = String, Path)), request_body = ChangeProfile, responses((status = 200, description = "200: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn change_profile(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
    key: IdempotencyKeyHeader,
    body: JsonBody<ChangeProfile>,
) -> Result<Response, ApiError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::not_found("no such user"));
    }
    let ctx = respond::context(&caller, if_match, key, &body.raw);
    let make = respond::id_and_version(200);
    let executed = state
        .commands
        .execute_with_response::<User>(
            &id,
            UserCommand::ChangeProfile {
                actor: caller.user_id.clone(),
                display_name: body.value.display_name,
            },
            &id,
            &ctx,
            &make,
        )
        .await?;
    Ok(respond::executed(executed, make))
}
