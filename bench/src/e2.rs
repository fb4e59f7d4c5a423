//! E2 (docs/benchmarks.md): chat fan-out through the WebSocket hub, and idle connections.
//!
//! Chronicle runs as its own process (`chronicle up` on the bench's servers, found next to
//! the bench binary: `cargo build --release -p chronicle` first), so its RSS is measured
//! apart from the clients'. `members` users join one room and subscribe over WebSocket; a
//! sender posts messages at a fixed rate (open loop), each carrying its send time; every
//! member records send-to-receipt latency. Then `idle` more connections are opened and held,
//! and the process's RSS growth per connection is reported.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    process::{rss_kib, settled_rss_kib, start, user},
    report::Measurement,
    servers::Servers,
};

/// Idle connections (each read by a task of its own, so it answers pings) from several
/// loopback source addresses (one address has ~28,000
/// ephemeral ports), 16 opening at a time, the users' tokens taken in turn (a few
/// connections each, as idle users would have). Client buffers are small: the bench holds
/// the other end of every connection.
async fn open_idle(
    base: &str,
    users: &[(String, String)],
    from: usize,
    count: usize,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let server: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .context("the gateway's address")?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let open = |n: usize| async move {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (n % 8) as u8);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let stream = socket.connect(server).await?;
        let token = &users[n % users.len()].1;
        let url = format!("ws://{server}/ws?token={token}");
        let (mut socket, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        // Reading answers the server's pings, as a live idle client does.
        anyhow::Ok(tokio::spawn(async move {
            while let Some(Ok(_)) = socket.next().await {}
        }))
    };
    let opened: Vec<_> = futures::stream::iter(from..from + count)
        .map(open)
        .buffer_unordered(16)
        .collect()
        .await;
    opened.into_iter().collect()
}

/// The part of a frame the members read.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    body: Option<&'a str>,
}

/// Runs E2 and prints its lines.
///
/// # Errors
/// When a server or Chronicle cannot be started, or the load fails.
pub async fn run(
    servers: &Servers,
    members: usize,
    rate: u64,
    seconds: u64,
    idle: &[usize],
) -> anyhow::Result<()> {
    // As many descriptors as the hard limit allows, for this process and (inherited) for
    // Chronicle's: each holds one end of every connection.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    let fresh = servers.fresh().await?;
    let (chronicle, base) = start(&fresh.db_url, &fresh.nats_url)?;
    let pid = chronicle.0.id();
    let http = reqwest::Client::new();
    let ws_base = base.replace("http://", "ws://");
    eprintln!("bench: E2 registering {members} members");
    let mut users = Vec::with_capacity(members);
    for chunk in (0..members).collect::<Vec<_>>().chunks(16) {
        let batch = futures::future::join_all(
            chunk
                .iter()
                .map(|i| user(&http, &base, format!("member_{i}"))),
        )
        .await;
        for u in batch {
            users.push(u?);
        }
    }
    let (owner, owner_token) = users[0].clone();
    let others: Vec<&str> = users[1..].iter().map(|(id, _)| id.as_str()).collect();
    let room: Value = http
        .post(format!("{base}/api/v1/rooms"))
        .bearer_auth(&owner_token)
        .json(&json!({"kind": "group", "name": "e2", "members": others}))
        .send()
        .await?
        .json()
        .await?;
    let room = room["id"].as_str().context("a room id")?.to_owned();
    let _ = owner;
    let rss_before_members = rss_kib(pid)?;
    eprintln!("bench: E2 connecting {members} members");
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let epoch = Instant::now();
    let mut readers = Vec::new();
    for (_, token) in &users {
        let (mut socket, _) =
            tokio_tungstenite::connect_async(format!("{ws_base}/ws?token={token}")).await?;
        socket
            .send(Message::text(
                json!({"type": "subscribe", "room_id": room}).to_string(),
            ))
            .await?;
        let latencies = latencies.clone();
        readers.push(tokio::spawn(async move {
            let mut subscribed = false;
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout(Duration::from_secs(30), socket.next()).await
            {
                let Message::Text(text) = message else {
                    continue;
                };
                // Only what is measured is read: 200,000 frames a second go through the
                // clients on the same cores as the gateway.
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
                    continue;
                };
                match frame.kind {
                    "subscribed" => subscribed = true,
                    "message" => {
                        let sent: u64 = frame.body.unwrap_or("0").parse().unwrap_or(0);
                        let now = epoch.elapsed().as_micros() as u64;
                        latencies
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(Duration::from_micros(now.saturating_sub(sent)));
                    }
                    _ => {}
                }
            }
            subscribed
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_members = rss_kib(pid)?;
    eprintln!("bench: E2 sending {rate} messages/s for {seconds} s");
    let total = rate * seconds;
    let started = Instant::now();
    let mut sends = Vec::new();
    for n in 0..total {
        // Open loop: message n leaves at n / rate, whatever the ones before are doing.
        let due = Duration::from_micros(n * 1_000_000 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let (http, base, room, token) = (
            http.clone(),
            base.clone(),
            room.clone(),
            owner_token.clone(),
        );
        sends.push(tokio::spawn(async move {
            let sent = Instant::now();
            let body = epoch.elapsed().as_micros().to_string();
            let accepted = http
                .post(format!("{base}/api/v1/rooms/{room}/messages"))
                .bearer_auth(token)
                .json(&json!({"body": body, "client_msg_id": format!("e2-{n}")}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            accepted.then(|| sent.elapsed())
        }));
    }
    let mut send_latencies = Vec::with_capacity(sends.len());
    for send in sends {
        if let Ok(Some(latency)) = send.await {
            send_latencies.push(latency);
        }
    }
    let accepted = send_latencies.len() as u64;
    let sending = started.elapsed();
    let expected = accepted * members as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len() as u64)
        < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = std::mem::take(
        &mut *latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let delivered = samples.len() as u64;
    let mut line =
        Measurement::new("chronicle", "E2", members, delivered, sending).latencies(samples);
    line.label = Some("fan-out");
    let mut out = serde_json::to_value(&line)?;
    out["messages_sent"] = json!(accepted);
    // The HTTP answer to the sender (the append): the part of delivery before the log.
    let sends = Measurement::new("chronicle", "E2", 1, accepted, sending).latencies(send_latencies);
    out["send_p50_ms"] = json!(sends.p50_ms);
    out["send_p99_ms"] = json!(sends.p99_ms);
    out["deliveries_expected"] = json!(expected);
    out["gateway_rss_kib"] = json!(rss_kib(pid)?);
    out["rss_kib_before_members"] = json!(rss_before_members);
    out["rss_kib_with_members"] = json!(rss_members);
    println!("{out}");
    for reader in readers {
        reader.abort();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut held = Vec::new();
    let before = settled_rss_kib(pid).await?;
    let mut last = (0, before);
    for &level in idle.iter().filter(|&&level| level > 0) {
        // Each process holds one end of every connection, and some descriptors for itself.
        if level as u64 + members as u64 + 1_024 > hard {
            println!(
                "{}",
                json!({"system": "chronicle", "workload": "E2", "label": "idle",
                    "connections": level, "held": false,
                    "why": format!("RLIMIT_NOFILE's hard limit here is {hard} descriptors per \
                        process, and it cannot be raised (no CAP_SYS_RESOURCE)")})
            );
            continue;
        }
        eprintln!("bench: E2 holding {level} idle connections");
        let opened = Instant::now();
        let from = held.len();
        held.extend(open_idle(&base, &users, from, level.saturating_sub(from)).await?);
        let seconds_to_open = opened.elapsed().as_secs_f64();
        let after = settled_rss_kib(pid).await?;
        let per = (after.saturating_sub(before) as f64 * 1024.0) / held.len() as f64;
        // The growth since the previous level: what one more connection costs, without what
        // the allocator kept or returned from the phase before.
        let added = (after.saturating_sub(last.1) as f64 * 1024.0) / (held.len() - last.0) as f64;
        println!(
            "{}",
            json!({"system": "chronicle", "workload": "E2", "label": "idle",
                "connections": held.len(), "held": true, "seconds_to_open": seconds_to_open,
                "rss_kib_before": before, "rss_kib_after": after,
                "bytes_per_connection": per.round(),
                "bytes_per_connection_since_previous_level": added.round()})
        );
        last = (held.len(), after);
    }
    for connection in held {
        connection.abort();
    }
    drop(chronicle);
    Ok(())
}
