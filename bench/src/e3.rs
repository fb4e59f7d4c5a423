//! E3 (docs/benchmarks.md): a large file uploaded through Chronicle's chunked upload route (declare,
//! 8 MiB chunks, complete) and through its tus endpoint (one streamed `PATCH`, as tus
//! clients send by default), against the same amount of bytes put straight into the
//! JetStream object store by async-nats in the same run; throughput of each, their ratios,
//! and the peak RSS of the gateway (a `chronicle gateway` process of its own beside a
//! `chronicle up` running everything else; sampled every 50 ms) while uploading.
//!
//! The bytes are made on the fly from their offset (never held whole, here either); their
//! SHA-256 is computed first, as a client declaring an upload would.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sha2::Digest;

use crate::{
    process::{rss_kib, start, start_role, user, PeakRss},
    servers::Servers,
};

const MIB: u64 = 1024 * 1024;

/// Bytes `offset..offset + len` of the file.
fn bytes(offset: u64, len: usize) -> Vec<u8> {
    salted(offset, len, 0)
}

/// Bytes `offset..offset + len` of another file for each `salt`.
fn salted(offset: u64, len: usize, salt: u8) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8 ^ (((offset + i) / 4096) % 256) as u8 ^ salt)
        .collect()
}

/// The file as a reader, made on the fly.
struct Generated {
    offset: u64,
    size: u64,
}

impl tokio::io::AsyncRead for Generated {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (self.size - self.offset).min(buf.remaining() as u64) as usize;
        buf.put_slice(&bytes(self.offset, n));
        self.offset += n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs E3 and prints its line.
///
/// # Errors
/// When a server or Chronicle cannot be started, or an upload fails.
pub async fn run(servers: &Servers, mib: u64) -> anyhow::Result<()> {
    let size = mib * MIB;
    let fresh = servers.fresh().await?;
    let (chronicle, _) = start(&fresh.db_url, &fresh.nats_url)?;
    let (gateway, base) = start_role(&fresh.db_url, &fresh.nats_url, "gateway")?;
    let pid = gateway.0.id();
    let at_start = crate::process::settled_rss_kib(pid).await?;
    let http = reqwest::Client::new();
    let (_, token) = user(&http, &base, "e3_uploader".to_owned()).await?;

    eprintln!("bench: E3 hashing {mib} MiB");
    let mut hasher = sha2::Sha256::new();
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(8 * MIB);
        hasher.update(bytes(offset, n as usize));
        offset += n;
    }
    let sha256 = hex(&hasher.finalize());

    // Peak RSS while uploading.
    let idle_rss = rss_kib(pid)?;
    let peak = PeakRss::start(pid)?;

    eprintln!("bench: E3 uploading {mib} MiB in chunks over HTTP");
    let started = Instant::now();
    let declared: Value = http
        .post(format!("{base}/api/v1/files/uploads"))
        .bearer_auth(&token)
        .json(&json!({"name": "e3.bin", "size": size, "sha256": sha256,
            "content_type": "application/octet-stream"}))
        .send()
        .await?
        .json()
        .await?;
    let upload = declared["upload_id"]
        .as_str()
        .context("an upload id")?
        .to_owned();
    let chunk = declared["chunk_size"].as_u64().context("a chunk size")?;
    let chunks = size.div_ceil(chunk);
    for index in 0..chunks {
        let offset = index * chunk;
        let len = (size - offset).min(chunk) as usize;
        let r = http
            .put(format!(
                "{base}/api/v1/files/uploads/{upload}/chunks/{index}"
            ))
            .bearer_auth(&token)
            .body(bytes(offset, len))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 204, "chunk {index}: {}", r.status());
    }
    let chunks_sent = started.elapsed();
    let peak_while_sending = peak.so_far();
    // Completing a large file outlasts the handler timeout: the assembly goes on, and the
    // client asks again, as the API contract's 503 says.
    let mut completions = 0;
    loop {
        completions += 1;
        let done = http
            .post(format!("{base}/api/v1/files/uploads/{upload}/complete"))
            .bearer_auth(&token)
            .send()
            .await?;
        match done.status().as_u16() {
            201 => break,
            503 if completions < 120 => tokio::time::sleep(Duration::from_millis(500)).await,
            other => anyhow::bail!("complete: {other}"),
        }
    }
    let through_http = started.elapsed();
    let peak_http = peak.stop().await?;

    eprintln!("bench: E3 uploading {mib} other MiB through tus, in one PATCH");
    let before_tus = rss_kib(pid)?;
    let peak = PeakRss::start(pid)?;
    let started = Instant::now();
    let created = http
        .post(format!("{base}/api/v1/files/tus"))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", size.to_string())
        .header("upload-metadata", "filename ZTMtdHVzLmJpbg==")
        .send()
        .await?;
    anyhow::ensure!(created.status() == 201, "tus create: {}", created.status());
    let location = created
        .headers()
        .get("location")
        .context("a Location")?
        .to_str()?
        .to_owned();
    let body = futures::stream::iter((0..size.div_ceil(MIB)).map(move |i| {
        let offset = i * MIB;
        Ok::<_, std::io::Error>(salted(offset, (size - offset).min(MIB) as usize, 0x5a))
    }));
    let patched = http
        .patch(format!("{base}{location}"))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?;
    anyhow::ensure!(patched.status() == 204, "tus patch: {}", patched.status());
    anyhow::ensure!(
        patched.headers().contains_key("chronicle-file-id"),
        "the upload became a file"
    );
    let through_tus = started.elapsed();
    let peak_tus = peak.stop().await?;

    eprintln!("bench: E3 putting the same {mib} MiB straight into the object store");
    let js = async_nats::jetstream::new(async_nats::connect(&fresh.nats_url).await?);
    let direct = js
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: "e3-direct".to_owned(),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    direct
        .put("e3.bin", &mut Generated { offset: 0, size })
        .await?;
    let straight = started.elapsed();
    // The same put in 1 MiB messages, as Chronicle writes: what is left of the ratio is
    // Chronicle's own cost, not the message size.
    let started = Instant::now();
    direct
        .put(
            async_nats::jetstream::object_store::ObjectMetadata {
                name: "e3-1mib.bin".to_owned(),
                chunk_size: Some(MIB as usize),
                ..Default::default()
            },
            &mut Generated { offset: 0, size },
        )
        .await?;
    let straight_1mib = started.elapsed();

    let mb = size as f64 / 1e6;
    let ratio =
        |took: Duration| ((straight.as_secs_f64() / took.as_secs_f64()) * 1000.0).round() / 1000.0;
    let ratio_1mib = |took: Duration| {
        ((straight_1mib.as_secs_f64() / took.as_secs_f64()) * 1000.0).round() / 1000.0
    };
    println!(
        "{}",
        json!({"system": "chronicle", "workload": "E3", "label": "tus", "mib": mib,
            "seconds_tus": through_tus.as_secs_f64(),
            "mb_per_s_tus": (mb / through_tus.as_secs_f64()).round(),
            "seconds_direct_put": straight.as_secs_f64(),
            "mb_per_s_direct_put": (mb / straight.as_secs_f64()).round(),
            "ratio_of_direct": ratio(through_tus),
            "seconds_direct_put_1mib_messages": straight_1mib.as_secs_f64(),
            "ratio_of_direct_1mib_messages": ratio_1mib(through_tus),
            "gateway_rss_kib_before": before_tus,
            "gateway_rss_kib_peak": peak_tus})
    );
    println!(
        "{}",
        json!({"system": "chronicle", "workload": "E3", "label": "chunked-http", "mib": mib,
            "seconds_http": through_http.as_secs_f64(),
            "mb_per_s_http": (mb / through_http.as_secs_f64()).round(),
            "seconds_direct_put": straight.as_secs_f64(),
            "mb_per_s_direct_put": (mb / straight.as_secs_f64()).round(),
            "ratio_of_direct": ratio(through_http),
            "seconds_direct_put_1mib_messages": straight_1mib.as_secs_f64(),
            "ratio_of_direct_1mib_messages": ratio_1mib(through_http),
            "seconds_chunks": chunks_sent.as_secs_f64(),
            "seconds_complete": (through_http - chunks_sent).as_secs_f64(),
            "complete_requests": completions,
            "gateway_rss_kib_at_start": at_start,
            "gateway_rss_kib_idle": idle_rss,
            "gateway_rss_kib_peak_sending_chunks": peak_while_sending,
            "gateway_rss_kib_peak": peak_http})
    );
    drop(gateway);
    drop(chronicle);
    Ok(())
}
