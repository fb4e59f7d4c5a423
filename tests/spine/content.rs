//! File bytes in the JetStream object store, named by their SHA-256 (issue 12), against a
//! real nats-server: streamed in and out, stored once however often they come, refused past
//! a limit without a trace, removed on request.

use chronicle_bus::{Blob, ContentError, ContentStore, Part, Sealed, FILES_BUCKET};
use chronicle_tests::sha256_hex;
use chronicle_tests::TestNats;
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;

/// `len` bytes that are not all alike (a byte pattern off by one from any chunk size).
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

async fn store(
    nats: &TestNats,
) -> (
    ContentStore,
    async_nats::jetstream::object_store::ObjectStore,
) {
    let js = async_nats::jetstream::new(nats.client().await);
    let store = ContentStore::open(&js, 1).await.unwrap();
    let raw = js.get_object_store(FILES_BUCKET).await.unwrap();
    (store, raw)
}

/// Writes and keeps (the gateway claims the bytes in between; nothing sweeps here).
async fn put(
    store: &ContentStore,
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: u64,
) -> Result<chronicle_bus::Stored, ContentError> {
    let written = store.write(reader, limit).await?;
    store.keep(written).await
}

async fn read_all(store: &ContentStore, blob: &Blob, start: u64, len: u64) -> Vec<u8> {
    store
        .read(blob, start, len)
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn bytes_are_stored_once_under_their_hash_and_read_back_exactly() {
    let nats = TestNats::start();
    let (store, raw) = store(&nats).await;
    let data = bytes(3 * 1024 * 1024 + 17, 1);
    let first = put(&store, &mut data.as_slice(), 1 << 30).await.unwrap();
    assert_eq!(first.sha256, sha256_hex(&data));
    assert_eq!(first.size, data.len() as u64);
    assert!(!first.deduplicated);
    let again = put(&store, &mut data.as_slice(), 1 << 30).await.unwrap();
    assert_eq!(again.sha256, first.sha256);
    assert!(again.deduplicated, "the same bytes are not stored twice");
    let mut read = Vec::new();
    store
        .get(&first.sha256)
        .await
        .unwrap()
        .expect("stored")
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert!(read == data, "the bytes read back are the bytes stored");
    // Other bytes, another object.
    let other = put(&store, &mut &b"hello"[..], 1 << 30).await.unwrap();
    assert_eq!(other.sha256, sha256_hex(b"hello"));
    assert!(!other.deduplicated);
    // Two manifests, two parts: the second copy left nothing behind.
    let names = crate::common::file_objects(nats.client().await).await;
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("part.")).count(), 2);
    // The 3 MiB part was written in whole 1 MiB messages, however the bytes came in.
    let blob = store.blob(&first.sha256).await.unwrap().unwrap();
    assert_eq!(blob.size, data.len() as u64);
    let part = raw.info(&blob.parts[0].name).await.unwrap();
    assert_eq!(part.chunks, 4, "3 MiB + 17 bytes in 1 MiB messages");
}

#[tokio::test]
async fn parts_sealed_under_their_hash_read_as_one_and_ranges_skip_whole_parts() {
    let nats = TestNats::start();
    let (store, _raw) = store(&nats).await;
    let data = bytes(2_500_000, 3);
    let mut parts = Vec::new();
    for (n, piece) in data.chunks(1_000_000).enumerate() {
        let name = format!("chunk.test.{n}");
        let size = store
            .put_part(&name, &mut &piece[..], 1 << 30)
            .await
            .unwrap();
        parts.push(Part { name, size });
    }
    let blob = Blob {
        size: data.len() as u64,
        parts: parts.clone(),
    };
    let sha256 = store.hash(&blob).await.unwrap();
    assert_eq!(sha256, sha256_hex(&data));
    assert_eq!(store.seal(&sha256, &parts).await.unwrap(), Sealed::New);
    assert_eq!(store.seal(&sha256, &parts).await.unwrap(), Sealed::Already);
    let other = vec![parts[0].clone()];
    assert_eq!(
        store.seal(&sha256, &other).await.unwrap(),
        Sealed::Elsewhere
    );
    let sealed = store.blob(&sha256).await.unwrap().unwrap();
    assert_eq!(sealed, blob);
    // Every range, across part boundaries, is the bytes exactly.
    for (start, len) in [
        (0, 2_500_000),
        (999_999, 2),
        (1_000_000, 1_000_000),
        (1_500_000, 1_000_000),
        (2_499_999, 1),
        (2_000_001, 10),
        (5, 0),
    ] {
        let got = read_all(&store, &sealed, start, len).await;
        assert!(
            got == data[start as usize..(start + len) as usize],
            "{start}+{len}"
        );
    }
    // A put of the same bytes finds them and keeps nothing of its own.
    let again = put(&store, &mut data.as_slice(), 1 << 30).await.unwrap();
    assert!(again.deduplicated);
    // Deleting removes the manifest and every part.
    store.delete(&sha256).await.unwrap();
    assert!(!store.contains(&sha256).await.unwrap());
    assert_eq!(
        crate::common::file_objects(nats.client().await).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_part_missing_under_a_manifest_is_an_error_not_short_bytes() {
    let nats = TestNats::start();
    let (store, _raw) = store(&nats).await;
    let parts = vec![
        Part {
            name: "chunk.gone.0".into(),
            size: store
                .put_part("chunk.gone.0", &mut &b"abc"[..], 10)
                .await
                .unwrap(),
        },
        Part {
            name: "chunk.gone.1".into(),
            size: 3,
        },
    ];
    let blob = Blob { size: 6, parts };
    let read: Result<Vec<_>, _> = store.read(&blob, 0, 6).try_collect().await;
    assert!(read.is_err(), "a missing part reads as an error");
}

#[tokio::test]
async fn bytes_past_the_limit_are_refused_and_leave_nothing() {
    let nats = TestNats::start();
    let (store, _raw) = store(&nats).await;
    let data = bytes(200_000, 2);
    match put(&store, &mut data.as_slice(), 100_000).await {
        Err(ContentError::TooLarge { limit: 100_000 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!store.contains(&sha256_hex(&data)).await.unwrap());
    assert_eq!(
        crate::common::file_objects(nats.client().await).await,
        Vec::<String>::new(),
        "no part is left"
    );
}

#[tokio::test]
async fn deleted_bytes_are_gone_and_deleting_twice_is_harmless() {
    let nats = TestNats::start();
    let (store, _raw) = store(&nats).await;
    let stored = put(&store, &mut &b"short-lived"[..], 1024).await.unwrap();
    assert!(store.contains(&stored.sha256).await.unwrap());
    store.delete(&stored.sha256).await.unwrap();
    assert!(!store.contains(&stored.sha256).await.unwrap());
    assert!(store.get(&stored.sha256).await.unwrap().is_none());
    store.delete(&stored.sha256).await.unwrap();
    // Stored again after deletion: written anew, not "deduplicated" against nothing.
    let again = put(&store, &mut &b"short-lived"[..], 1024).await.unwrap();
    assert!(!again.deduplicated);
    assert!(store.contains(&again.sha256).await.unwrap());
}

#[tokio::test]
async fn parts_written_at_once_interleave_in_the_stream_and_still_read_back_exactly() {
    let nats = TestNats::start();
    let (store, _raw) = store(&nats).await;
    // Two parts of six 1 MiB messages, written in step: each writer gives its next chunk
    // only once both have had their previous one acknowledged, so their messages alternate
    // in the stream, and reading one ahead by sequence meets the other's.
    let (a, b) = (bytes(6 * 1024 * 1024, 4), bytes(6 * 1024 * 1024 - 9, 5));
    fn in_step(
        data: Vec<u8>,
        barrier: std::sync::Arc<tokio::sync::Barrier>,
    ) -> impl tokio::io::AsyncRead + Unpin {
        const MIB: usize = 1024 * 1024;
        tokio_util::io::StreamReader::new(Box::pin(futures::stream::unfold(
            (data, 0usize),
            move |(data, at)| {
                let barrier = barrier.clone();
                async move {
                    if at >= data.len() {
                        return None;
                    }
                    if at > 0 {
                        barrier.wait().await;
                    }
                    let end = (at + MIB).min(data.len());
                    let piece = bytes_crate::Bytes::copy_from_slice(&data[at..end]);
                    Some((Ok::<_, std::io::Error>(piece), (data, end)))
                }
            },
        )))
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let (mut ra, mut rb) = (
        in_step(a.clone(), barrier.clone()),
        in_step(b.clone(), barrier),
    );
    let (wa, wb) = tokio::join!(
        store.put_part("chunk.a.0", &mut ra, 1 << 30),
        store.put_part("chunk.b.0", &mut rb, 1 << 30)
    );
    let (wa, wb) = (wa.unwrap(), wb.unwrap());
    // The chunks did interleave: part a's messages are not one run in the stream.
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("OBJ_files").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut subjects = Vec::new();
    for seq in 1..=last {
        let message = stream.direct_get(seq).await.unwrap();
        if message.subject.starts_with("$O.files.C.") {
            subjects.push(message.subject.to_string());
        }
    }
    let first = &subjects[0];
    let runs = subjects
        .windows(2)
        .filter(|w| w[0] != *first && w[1] == *first)
        .count();
    assert!(runs >= 1, "the two parts' chunks interleave: {subjects:?}");
    for (name, size, data) in [("chunk.a.0", wa, &a), ("chunk.b.0", wb, &b)] {
        let blob = Blob {
            size,
            parts: vec![Part {
                name: name.into(),
                size,
            }],
        };
        let read = read_all(&store, &blob, 0, size).await;
        assert!(read == *data, "{name} reads back exactly");
        assert_eq!(store.hash(&blob).await.unwrap(), sha256_hex(data));
    }
}
