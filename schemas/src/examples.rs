//! One example of every event type, as typed values: each exported schema carries its
//! event's examples (`"examples"`, JSON Schema's keyword), so an integrator sees a payload
//! beside its shape. The compiler checks each is an event; a test checks each matches the
//! schema it is exported in, and that no event type is left without one.

use chrono::{DateTime, Utc};

use crate::{
    blog::{CommentEvent, PostEvent},
    chat::{RoomEvent, RoomKind},
    commerce::{
        AppliedCoupon, CancelledBy, CartEvent, CartLine, CouponEvent, InventoryEvent, OrderEvent,
        OrderLine,
    },
    files::{FileEvent, ShareEvent, TusUploadEvent, UploadEvent},
    identity::UserEvent,
    scheduler::{
        Action, CommandAction, JobEvent, JobSpec, MissedPolicy, OverlapPolicy, Schedule,
        SkipReason, TriggerEvent,
    },
};

/// Examples of an event enum's payloads: at least one of each variant.
pub trait Examples: Sized {
    fn examples() -> Vec<Self>;
}

/// An instant of the examples: `2026-12-06T10:00:00Z` plus `seconds`.
pub fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_796_551_200 + seconds, 0).unwrap_or_default()
}

const USER: &str = "0193f6a2-7c1e-7d40-9a51-3f2b8c0d1e01";
const OTHER_USER: &str = "0193f6a2-7c1e-7d40-9a51-3f2b8c0d1e02";
const ORDER: &str = "0193f6a3-1b2c-7e40-8f11-2a3b4c5d6e01";
const FILE: &str = "0193f6a4-2c3d-7f50-9a22-3b4c5d6e7f01";
const SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

fn s(text: &str) -> String {
    text.to_owned()
}

impl Examples for UserEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::UserRegistered {
                username: s("tess"),
                display_name: s("Tess Ogden"),
            },
            Self::ProfileChanged {
                display_name: s("Tess O."),
            },
        ]
    }
}

impl Examples for PostEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::PostDrafted {
                post_id: s("0193f6a5-3d4e-7a60-8b33-4c5d6e7f8a01"),
                author_id: s(USER),
                title: s("Brewing by lantern light"),
                body_markdown: s("Some **notes** on brewing."),
                tags: vec![s("brewing"), s("notes")],
            },
            Self::PostEdited {
                title: s("Brewing by lantern light, again"),
                body_markdown: s("Some more **notes** on brewing."),
            },
            Self::TagsChanged {
                tags: vec![s("brewing")],
            },
            Self::PostPublished {},
            Self::PostUnpublished {},
            Self::PostDeleted {},
        ]
    }
}

impl Examples for CommentEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::CommentAdded {
                comment_id: s("0193f6a5-3d4e-7a60-8b33-4c5d6e7f8a02"),
                post_id: s("0193f6a5-3d4e-7a60-8b33-4c5d6e7f8a01"),
                post_author_id: s(USER),
                author_id: s(OTHER_USER),
                body_markdown: s("Lovely *light*."),
            },
            Self::CommentDeleted {},
        ]
    }
}

impl Examples for InventoryEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::ItemCreated {
                sku: s("LAMP-1"),
                name: s("Storm lantern"),
                price_cents: 2_500,
                initial_stock: 40,
            },
            Self::StockReceived { quantity: 12 },
            Self::StockReserved {
                reservation_id: s(ORDER),
                quantity: 2,
            },
            Self::ReservationReleased {
                reservation_id: s(ORDER),
                quantity: 2,
            },
            Self::ReservationCommitted {
                reservation_id: s(ORDER),
                quantity: 2,
            },
            Self::ItemRenamed {
                name: s("Storm lantern, brass"),
            },
            Self::ItemRepriced { price_cents: 2_750 },
            Self::ItemDescribed {
                description: s("Brass and glass; burns eight hours on a filling."),
            },
            Self::ItemDiscontinued {},
        ]
    }
}

impl Examples for OrderEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::OrderPlaced {
                order_id: s(ORDER),
                customer_id: s(USER),
                lines: vec![OrderLine {
                    sku: s("LAMP-1"),
                    quantity: 2,
                    unit_price_cents: 2_500,
                }],
                coupon: Some(AppliedCoupon {
                    code: s("GLOW10"),
                    percent_off: 10,
                }),
                subtotal_cents: 5_000,
                discount_cents: 500,
                total_cents: 4_500,
            },
            Self::OrderReserved {},
            Self::OrderRejected {
                reason: s("insufficient_stock"),
            },
            Self::PaymentRequested {
                amount_cents: 4_500,
            },
            Self::PaymentFailed {
                reason: s("payment_declined"),
            },
            Self::OrderPaid {
                payment_id: s("pay_0193f6a6"),
                amount_cents: 4_500,
            },
            Self::LatePaymentCharged {
                payment_id: s("pay_0193f6a7"),
                amount_cents: 4_500,
            },
            Self::PaymentRefunded {
                refund_id: s("ref_0193f6a8"),
                amount_cents: 4_500,
            },
            Self::OrderShipped {},
            Self::OrderCancelled {
                by: CancelledBy::PaymentTimeout,
                refund_cents: 0,
            },
        ]
    }
}

impl Examples for CouponEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::CouponCreated {
                code: s("GLOW10"),
                percent_off: 10,
                max_redemptions: 100,
            },
            Self::CouponRedeemed { order_id: s(ORDER) },
            Self::RedemptionReleased { order_id: s(ORDER) },
        ]
    }
}

impl Examples for CartEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::LineSet {
                sku: s("LAMP-1"),
                quantity: 2,
            },
            Self::LineRemoved { sku: s("WICK-3") },
            Self::CartEmptied {},
            Self::CheckedOut {
                order_id: s(ORDER),
                lines: vec![CartLine {
                    sku: s("LAMP-1"),
                    quantity: 2,
                }],
            },
            Self::CartAbandoned { lines: 1 },
        ]
    }
}

impl Examples for RoomEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::RoomCreated {
                room_id: s("0193f6a9-4e5f-7b70-9c44-5d6e7f8a9b01"),
                kind: RoomKind::Group,
                name: Some(s("Lanterns")),
                members: vec![s(USER), s(OTHER_USER)],
                created_by: s(USER),
            },
            Self::MemberAdded {
                user_id: s(OTHER_USER),
                by: s(USER),
            },
            Self::MemberRemoved {
                user_id: s(OTHER_USER),
                by: s(USER),
            },
            Self::MessageSent {
                message_id: s("0193f6a9-4e5f-7b70-9c44-5d6e7f8a9b02"),
                seq: 1,
                sender_id: s(USER),
                body: s("the lantern at dusk"),
                client_msg_id: s("c-1"),
                sent_at: at(60),
                file_ids: vec![s(FILE)],
            },
            Self::ReadMarked {
                user_id: s(OTHER_USER),
                up_to_seq: 1,
            },
        ]
    }
}

impl Examples for FileEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::FileStored {
                file_id: s(FILE),
                owner_id: s(USER),
                name: s("glow.png"),
                size: 5,
                content_type: s("image/png"),
                sha256: s(SHA256),
                stored_at: at(0),
            },
            Self::FileRenamed {
                name: s("lantern.png"),
            },
            Self::FileDeleted {
                deleted_at: at(600),
            },
        ]
    }
}

impl Examples for UploadEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::UploadStarted {
                upload_id: s("0193f6aa-5f6a-7c80-8d55-6e7f8a9b0c01"),
                owner_id: s(USER),
                name: s("film.mp4"),
                size: 12_582_912,
                content_type: s("video/mp4"),
                sha256: s(SHA256),
                chunk_size: 8_388_608,
                expires_at: at(86_400),
            },
            Self::ChunkReceived {
                index: 1,
                part: Some(s("chunk.0193f6aa-5f6a-7c80-8d55-6e7f8a9b0c01.1")),
            },
            Self::UploadCompleted { file_id: s(FILE) },
            Self::UploadExpired {},
        ]
    }
}

impl Examples for TusUploadEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::TusUploadCreated {
                upload_id: s("0193f6ab-6a7b-7d90-9e66-7f8a9b0c1d01"),
                owner_id: s(USER),
                name: s("lantern.bin"),
                size: 3_145_728,
                content_type: s("application/octet-stream"),
                expires_at: at(86_400),
            },
            Self::TusSegmentStored {
                offset: 0,
                length: 1_048_576,
                part: s("tus.0193f6ab-6a7b-7d90-9e66-7f8a9b0c1d01.0"),
            },
            Self::TusUploadFinished {
                file_id: s(FILE),
                sha256: s(SHA256),
            },
            Self::TusUploadTerminated {},
            Self::TusUploadExpired {},
        ]
    }
}

impl Examples for ShareEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::ShareCreated {
                file_id: s(FILE),
                owner_id: s(USER),
                created_at: at(0),
                expires_at: at(3_600),
            },
            Self::ShareRevoked {
                revoked_at: at(1_800),
            },
        ]
    }
}

impl Examples for JobEvent {
    fn examples() -> Vec<Self> {
        let run = s("0193f6ac-7b8c-7ea0-8f77-8a9b0c1d2e02");
        vec![
            Self::JobCreated {
                job_id: s("0193f6ac-7b8c-7ea0-8f77-8a9b0c1d2e01"),
                owner_id: s(USER),
                spec: JobSpec {
                    name: s("nightly-report"),
                    schedule: Schedule::Cron {
                        expression: s("0 30 2 * * *"),
                        timezone: s("Europe/Berlin"),
                    },
                    action: Action::Http {
                        url: s("http://reports.internal:8000/nightly"),
                        method: s("POST"),
                        body: Some(s("{\"kind\":\"nightly\"}")),
                    },
                    max_retries: 3,
                    depends_on: vec![],
                    missed: MissedPolicy::RunOnce,
                    overlap: OverlapPolicy::Skip,
                    timeout_seconds: 60,
                    backoff_seconds: 10,
                },
                created_at: at(0),
                next_due_at: Some(at(55_800)),
            },
            Self::JobCreated {
                job_id: format!("order-payment-{ORDER}"),
                owner_id: s("saga:orders"),
                spec: JobSpec {
                    name: format!("order-payment-{ORDER}"),
                    schedule: Schedule::Once { at: at(900) },
                    action: Action::Command {
                        command: CommandAction::ExpireUnpaidOrder { order_id: s(ORDER) },
                    },
                    max_retries: 10,
                    depends_on: vec![],
                    missed: MissedPolicy::RunAll,
                    overlap: OverlapPolicy::Queue,
                    timeout_seconds: 30,
                    backoff_seconds: 5,
                },
                created_at: at(0),
                next_due_at: Some(at(900)),
            },
            Self::JobCreated {
                job_id: s("0193f6ac-7b8c-7ea0-8f77-8a9b0c1d2e03"),
                owner_id: s(USER),
                spec: JobSpec {
                    name: s("tell the warehouse"),
                    schedule: Schedule::OnEvent {
                        types: vec![s("OrderPaid")],
                        context: Some(s("commerce")),
                    },
                    action: Action::Http {
                        url: s("http://warehouse.internal:8000/paid"),
                        method: s("POST"),
                        body: None,
                    },
                    max_retries: 3,
                    depends_on: vec![],
                    missed: MissedPolicy::RunOnce,
                    overlap: OverlapPolicy::Skip,
                    timeout_seconds: 30,
                    backoff_seconds: 1,
                },
                created_at: at(0),
                next_due_at: None,
            },
            Self::JobPaused { paused_at: at(60) },
            Self::JobResumed {
                resumed_at: at(120),
                next_due_at: Some(at(55_800)),
            },
            Self::JobDeleted {
                deleted_at: at(180),
            },
            Self::RunStarted {
                run_id: run.clone(),
                due_at: at(55_800),
                attempt: 1,
                started_at: at(55_800),
                lease_until: at(55_890),
                next_due_at: Some(at(142_200)),
                event: None,
            },
            Self::RunStarted {
                run_id: s("0193f6ac-7b8c-7ea0-8f77-8a9b0c1d2e04"),
                due_at: at(61),
                attempt: 1,
                started_at: at(61),
                lease_until: at(96),
                next_due_at: None,
                event: Some(TriggerEvent {
                    event_type: s("OrderPaid"),
                    aggregate_id: s(ORDER),
                    stream_seq: 48_211,
                }),
            },
            Self::RunSucceeded {
                run_id: run.clone(),
                finished_at: at(55_802),
            },
            Self::RunFailed {
                run_id: run,
                finished_at: at(55_830),
                error: s("HTTP 503 Service Unavailable"),
                retry_at: Some(at(55_840)),
            },
            Self::RunsSkipped {
                from: at(55_800),
                to: at(142_200),
                reason: SkipReason::Missed,
                next_due_at: Some(at(228_600)),
            },
            Self::EventsSkipped {
                from_seq: 48_300,
                to_seq: 48_950,
                count: 12,
                skipped_at: at(4_000),
            },
        ]
    }
}
