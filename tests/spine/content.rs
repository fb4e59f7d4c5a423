//! File bytes in the JetStream object store, named by their SHA-256 (issue 12), against a
//! real nats-server: streamed in and out, stored once however often they come, refused past
//! a limit without a trace, removed on request.

use chronicle_bus::{ContentError, ContentStore};
use chronicle_tests::TestNats;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// `len` bytes that are not all alike (a byte pattern off by one from any chunk size).
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn store(nats: &TestNats) -> (ContentStore, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let js = async_nats::jetstream::new(nats.client().await);
    let store = ContentStore::open(&js, 1, scratch.path()).await.unwrap();
    (store, scratch)
}

#[tokio::test]
async fn bytes_are_stored_once_under_their_hash_and_read_back_exactly() {
    let nats = TestNats::start();
    let (store, scratch) = store(&nats).await;
    let data = bytes(3 * 1024 * 1024 + 17, 1);
    let first = store.put(&mut data.as_slice(), 1 << 30).await.unwrap();
    assert_eq!(first.sha256, sha256_hex(&data));
    assert_eq!(first.size, data.len() as u64);
    assert!(!first.deduplicated);
    let again = store.put(&mut data.as_slice(), 1 << 30).await.unwrap();
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
    let other = store.put(&mut &b"hello"[..], 1 << 30).await.unwrap();
    assert_eq!(other.sha256, sha256_hex(b"hello"));
    assert!(!other.deduplicated);
    // The scratch files are gone once the bytes are in.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn bytes_past_the_limit_are_refused_and_leave_nothing() {
    let nats = TestNats::start();
    let (store, scratch) = store(&nats).await;
    let data = bytes(200_000, 2);
    match store.put(&mut data.as_slice(), 100_000).await {
        Err(ContentError::TooLarge { limit: 100_000 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!store.contains(&sha256_hex(&data)).await.unwrap());
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn deleted_bytes_are_gone_and_deleting_twice_is_harmless() {
    let nats = TestNats::start();
    let (store, _scratch) = store(&nats).await;
    let stored = store.put(&mut &b"short-lived"[..], 1024).await.unwrap();
    assert!(store.contains(&stored.sha256).await.unwrap());
    store.delete(&stored.sha256).await.unwrap();
    assert!(!store.contains(&stored.sha256).await.unwrap());
    assert!(store.get(&stored.sha256).await.unwrap().is_none());
    store.delete(&stored.sha256).await.unwrap();
    // Stored again after deletion: written anew, not "deduplicated" against nothing.
    let again = store.put(&mut &b"short-lived"[..], 1024).await.unwrap();
    assert!(!again.deduplicated);
    assert!(store.contains(&again.sha256).await.unwrap());
}
