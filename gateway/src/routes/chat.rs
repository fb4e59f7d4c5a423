//! `/api/v1/rooms` (the API contract, Chat): rooms, members, messages, read marks. Members only: a
//! room's history is 403 to anyone else. (The WebSocket hub is not built yet.)

use chronicle_chat::{
    check_body, check_client_msg_id, check_file_ids, check_user_id, direct_room_claim, Room,
    RoomCommand, RoomKind, Sent,
};
use chronicle_commands::{CommandContext, CommandError, UniqueClaim};
use chronicle_files::File;
use chronicle_projections::chat_history::{self, Window};
use serde::Deserialize;
use serde_json::json;

use super::{
    page::{self},
    prelude::*,
};

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![
        create,
        list,
        add_member,
        remove_member,
        send,
        messages,
        read
    ]
}

/// Rooms and messages over HTTP, and the WebSocket hub.
fn chat_routes() -> Routes {
    routes().merge(crate::hub::routes::routes())
}

/// The chat context as the gateway hosts it.
pub const CONTEXT: Context = Context {
    beside: |_, _| None,
    routes: chat_routes,
    problems: &["direct_room_exists", "direct_room_fixed", "room_exists"],
    settings: |s| {
        s.declare::<crate::hub::ChatConfig>();
    },
    state: |_, _| {},
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// `group` or `direct`.
    #[schema(value_type = String, example = "group")]
    kind: RoomKind,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/rooms", tag = "chat", summary = "Create a group or direct room", request_body = CreateRoom, responses((status = 201, description = "201: {\"id\"}"), crate::schema::Problems))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<CreateRoom>,
) -> Result<Response, ApiError> {
    let room = body.value;
    ApiError::check(FieldError::collect(
        room.members.iter().map(|m| check_user_id("members", m)),
    ))?;
    let room_id = uuid::Uuid::now_v7().to_string();
    let mut ctx = respond::context(&caller, IfMatch(None), key, &body.raw);
    let direct_claim = match (room.kind, room.members.as_slice()) {
        (RoomKind::Direct, [other]) if *other != caller.user_id => {
            Some(direct_room_claim(&caller.user_id, other))
        }
        _ => None,
    };
    if let Some((namespace, value)) = &direct_claim {
        ctx.claims = vec![UniqueClaim::new(namespace.clone(), value.clone())];
    }
    let make = respond::id_and_version(201);
    let executed = state
        .commands
        .execute_with_response::<Room>(
            &room_id,
            RoomCommand::Create {
                room_id: room_id.clone(),
                kind: room.kind,
                name: room.name,
                members: room.members,
                by: caller.user_id.clone(),
            },
            &(),
            &ctx,
            &make,
        )
        .await;
    match (executed, direct_claim) {
        (Err(CommandError::ClaimTaken { .. }), Some((namespace, value))) => {
            let existing = state
                .commands
                .store_for::<Room>()
                .claim_holder(&namespace, &value)
                .await?;
            let mut error = ApiError::new(
                StatusCode::CONFLICT,
                "direct_room_exists",
                "a direct room between these two users exists already",
            );
            if let Some(id) = existing {
                error = error.with("id", id);
            }
            Err(error)
        }
        (executed, _) => Ok(respond::created(executed?, make, "/api/v1/rooms")),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/rooms", tag = "chat", summary = "The caller's rooms with the last message and unread count", responses((status = 200, description = "200: [{\"id\",\"kind\",\"name\",\"last_message\",\"unread\"}]"), crate::schema::Problems))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let request = PageRequest::new(params.limit.or(Some(200)), None)?;
    let rooms =
        chat_history::rooms_of(state.db.of(contexts::CHAT), &caller.user_id, request.limit).await?;
    Ok(Json(json!({"items": rooms, "next_cursor": null})).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Member {
    user_id: String,
}

#[utoipa::path(post, path = "/api/v1/rooms/{id}/members", tag = "chat", summary = "Add a member (members only)", params(("id" = String, Path)), request_body = Member, responses((status = 200, description = "200"), crate::schema::Problems))]
pub async fn add_member(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
    body: JsonBody<Member>,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "room")?;
    ApiError::check(FieldError::collect([check_user_id(
        "user_id",
        &body.value.user_id,
    )]))?;
    let command = RoomCommand::AddMember {
        user_id: body.value.user_id,
        by: caller.user_id.clone(),
    };
    let ctx = respond::context(&caller, if_match, key, &body.raw);
    room_command(&state, id, command, &ctx).await
}

#[utoipa::path(delete, path = "/api/v1/rooms/{id}/members/{user_id}", tag = "chat", summary = "Remove a member (members only)", params(("id" = String, Path), ("user_id" = String, Path)), responses((status = 200, description = "200"), crate::schema::Problems))]
pub async fn remove_member(
    State(state): State<AppState>,
    ApiPath((id, user_id)): ApiPath<(String, String)>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "room")?;
    let command = RoomCommand::RemoveMember {
        user_id,
        by: caller.user_id.clone(),
    };
    let ctx = respond::context(&caller, if_match, key, b"");
    room_command(&state, id, command, &ctx).await
}

async fn room_command(
    state: &AppState,
    id: &str,
    command: RoomCommand,
    ctx: &CommandContext,
) -> Result<Response, ApiError> {
    let make = respond::id_and_version(200);
    respond::run::<Room>(state, id, command, ctx, make, None).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Send {
    body: String,
    client_msg_id: String,
    /// Files of the sender's to attach.
    #[serde(default)]
    file_ids: Vec<String>,
}

/// 201 `{"id","seq","sent_at"}`; the same `client_msg_id` again answers the first message.
#[utoipa::path(post, path = "/api/v1/rooms/{id}/messages", tag = "chat", summary = "Send a message (client_msg_id makes a retry safe)", params(("id" = String, Path)), request_body = Send, responses((status = 201, description = "201: {\"id\",\"seq\",\"sent_at\"}"), crate::schema::Problems))]
pub async fn send(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<Send>,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "room")?;
    let message = body.value;
    ApiError::check(FieldError::collect([
        check_body(&message.body),
        check_client_msg_id(&message.client_msg_id),
        check_file_ids(&message.file_ids),
    ]))?;
    // `client_msg_id` is this route's idempotency key (the API contract): a repeat answers the first
    // message from the room itself, so no response is stored under `Idempotency-Key`.
    let ctx = CommandContext {
        idempotency: None,
        ..respond::context(&caller, IfMatch(None), key, &body.raw)
    };
    let sent = send_message(
        &state,
        &ctx,
        id,
        &caller.user_id,
        message.body,
        message.client_msg_id,
        message.file_ids,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": sent.message_id, "seq": sent.seq, "sent_at": sent.sent_at})),
    )
        .into_response())
}

/// Sends a message as `sender_id` and answers it as the room holds it: this one, or the
/// first one sent with this `client_msg_id`. Used by HTTP and by the WebSocket hub.
///
/// # Errors
/// The room's refusal, or the store's failure.
pub(crate) async fn send_message(
    state: &AppState,
    ctx: &CommandContext,
    room_id: &str,
    sender_id: &str,
    body: String,
    client_msg_id: String,
    file_ids: Vec<String>,
) -> Result<Sent, ApiError> {
    // Only files the sender owns may be attached (the room's members may then read them).
    for file_id in &file_ids {
        let owned = uuid::Uuid::parse_str(file_id).is_ok() && {
            let file = state.commands.state::<File>(file_id).await?.state;
            file.is_live() && file.owner_id() == sender_id
        };
        if !owned {
            return Err(ApiError::validation(vec![FieldError::new(
                "file_ids",
                format!("{file_id} is not a file of yours"),
            )]));
        }
    }
    let message_id = uuid::Uuid::now_v7().to_string();
    // Each attachment is recorded with the message's own commit (a claim per file and
    // message), so the room's members may read the file the moment the message is
    // acknowledged, before the history read model has it (`attached_for`). A retry of a
    // message the room already holds appends nothing and records nothing.
    let mut ctx = ctx.clone();
    if !file_ids.is_empty() {
        let retry = state
            .commands
            .state::<Room>(room_id)
            .await?
            .state
            .sent(sender_id, &client_msg_id)
            .is_some();
        if !retry {
            ctx.claims = file_ids
                .iter()
                .map(|file_id| UniqueClaim::new(attachment_claims(file_id), message_id.clone()))
                .collect();
        }
    }
    let command = RoomCommand::Send {
        message_id,
        sender_id: sender_id.to_owned(),
        body,
        client_msg_id: client_msg_id.clone(),
        sent_at: chrono::Utc::now(),
        file_ids,
    };
    state
        .commands
        .execute::<Room>(room_id, command, &(), &ctx)
        .await?;
    let loaded = state.commands.state::<Room>(room_id).await?;
    loaded
        .state
        .sent(sender_id, &client_msg_id)
        .cloned()
        .ok_or_else(|| {
            ApiError::internal(std::io::Error::other("a sent message is not in its room"))
        })
}

#[derive(Debug, Deserialize)]
pub struct MessagesParams {
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Which way a history page goes, and from where: what a `next_cursor` carries, so a client
/// that follows it (the API contract, "Pagination") keeps going the same way and ends.
fn window_cursor(window: Window) -> Option<String> {
    match window {
        Window::Latest => None,
        Window::Before(seq) => Some(page::cursor(format!("before:{seq}"))),
        Window::After(seq) => Some(page::cursor(format!("after:{seq}"))),
    }
}

/// The window a `cursor` made by [`window_cursor`] continues.
fn cursor_window(key: &str) -> Result<Window, ApiError> {
    let parsed = match key.split_once(':') {
        Some(("before", seq)) => seq.parse().ok().map(Window::Before),
        Some(("after", seq)) => seq.parse().ok().map(Window::After),
        _ => None,
    };
    parsed.ok_or_else(|| {
        ApiError::bad_request("invalid_cursor", "the cursor is not one this API gave out")
    })
}

/// Members only (403). Without a window, the newest `limit` messages; `before_seq` pages
/// back, `after_seq` forward; each page is in `seq` order. `next_cursor` continues the way the
/// page went (older pages for the newest and `before_seq`, newer ones for `after_seq`), each
/// message exactly once, and is null at the end; a `cursor` takes precedence over
/// `before_seq`/`after_seq`, so a client may keep its first query and add the cursor.
#[utoipa::path(get, path = "/api/v1/rooms/{id}/messages", tag = "chat", summary = "History by seq (?before_seq, ?after_seq, ?cursor, ?limit), members only", params(("id" = String, Path), ("before_seq" = Option<i64>, Query, description = "messages older than this seq"), ("after_seq" = Option<i64>, Query, description = "messages newer than this seq"), ("cursor" = Option<String>, Query, description = "the next_cursor of the previous page"), ("limit" = Option<i64>, Query, description = "1-200, default 50")), responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn messages(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
    ApiQuery(params): ApiQuery<MessagesParams>,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "room")?;
    let request = PageRequest::new(params.limit, params.cursor.as_deref())?;
    let window = match (
        request.after.as_deref(),
        params.before_seq,
        params.after_seq,
    ) {
        (Some(key), _, _) => cursor_window(key)?,
        (None, Some(_), Some(_)) => {
            return Err(ApiError::validation(vec![FieldError::new(
                "before_seq",
                "give before_seq or after_seq, not both",
            )]))
        }
        (None, Some(before), None) => Window::Before(before),
        (None, None, Some(after)) => Window::After(after),
        (None, None, None) => Window::Latest,
    };
    let room = room(&state, id).await?;
    if !room.is_member(&caller.user_id) {
        return Err(ApiError::forbidden("only the room's members read it"));
    }
    let mut items =
        chat_history::messages(state.db.of(contexts::CHAT), id, window, request.fetch()).await?;
    let more = items.len() as i64 > request.limit;
    let next = match window {
        Window::After(_) => {
            items.truncate(request.limit as usize);
            items.last().map(|m| Window::After(m.seq))
        }
        Window::Latest | Window::Before(_) => {
            if more {
                items.remove(0);
            }
            items.first().map(|m| Window::Before(m.seq))
        }
    };
    let next_cursor = next.filter(|_| more).and_then(window_cursor);
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})).into_response())
}

/// Room `room_id` as its last acknowledged command left it (404 when there is none): what
/// decides who may read a room, so a member added or removed a moment ago is answered as
/// such, whatever the read models have caught up with.
///
/// # Errors
/// 404 for no such room; the store's failure.
pub(crate) async fn room(state: &AppState, room_id: &str) -> Result<Room, ApiError> {
    let loaded = state
        .commands
        .store_for::<Room>()
        .load_from_snapshot::<Room>(room_id)
        .await?;
    if loaded.state.exists() {
        Ok(loaded.state)
    } else {
        Err(ApiError::not_found("no such room"))
    }
}

/// The claim namespace recording the messages that attached `file_id` (value: the message's
/// id; holder: its room).
fn attachment_claims(file_id: &str) -> String {
    format!("chat.attachment:{file_id}")
}

/// Whether `user_id` is now a member of a room where `file_id` was attached. The rooms are
/// those the messages' own commits recorded (see [`send_message`]: a file is readable by the
/// room the moment its message is acknowledged) and those the history read model lists
/// (attachments made before those records existed); membership is the room aggregate's, so
/// a member removed a moment ago reads no more.
///
/// # Errors
/// The store's or the database's failure.
pub(crate) async fn attached_for(
    state: &AppState,
    file_id: &str,
    user_id: &str,
) -> Result<bool, ApiError> {
    let attached = state
        .commands
        .store_for::<Room>()
        .claims_in(&attachment_claims(file_id), 1_000)
        .await?;
    let listed = chat_history::attachment_rooms(state.db.of(contexts::CHAT), file_id, 1_000)
        .await
        .map_err(ApiError::internal)?;
    let mut rooms: Vec<String> = attached.into_iter().map(|(_, room)| room).collect();
    rooms.extend(listed);
    rooms.sort_unstable();
    rooms.dedup();
    for room_id in rooms {
        let room = state
            .commands
            .store_for::<Room>()
            .load_from_snapshot::<Room>(&room_id)
            .await?
            .state;
        if room.is_member(user_id) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Read {
    up_to_seq: u64,
}

#[utoipa::path(post, path = "/api/v1/rooms/{id}/read", tag = "chat", summary = "Mark read up to a seq (never backwards)", params(("id" = String, Path)), request_body = Read, responses((status = 200, description = "200"), crate::schema::Problems))]
pub async fn read(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<Read>,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "room")?;
    let command = RoomCommand::MarkRead {
        user_id: caller.user_id.clone(),
        up_to_seq: body.value.up_to_seq,
    };
    let ctx = respond::context(&caller, IfMatch(None), key, &body.raw);
    room_command(&state, id, command, &ctx).await
}
