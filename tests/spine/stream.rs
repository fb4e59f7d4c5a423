//! The `EVENTS` stream provisioned by a starting process while a NATS cluster recovers.

use std::time::Duration;

use chronicle_engines::{ClusterNode, NatsOptions, NatsServer};
use chronicle_tests::free_port;

/// Three nats-servers in one cluster, each on a fixed port so a node started again is
/// where its clients look.
fn cluster(dir: &std::path::Path) -> Vec<NatsServer> {
    let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    (0..3)
        .map(|i| {
            NatsServer::start(NatsOptions {
                store_dir: dir.join(format!("n{i}")),
                port: Some(free_port()),
                cluster: Some(ClusterNode {
                    cluster_name: "chronicle-stream".into(),
                    server_name: format!("n{i}"),
                    route_port: route_ports[i],
                    route_ports: route_ports.clone(),
                }),
            })
            .expect("nats-server starts (run scripts/setup)")
        })
        .collect()
}

/// A role started while the cluster's nodes are down (JetStream cannot answer) waits for
/// the cluster instead of exiting, and provisions the stream once it is back. The fault
/// harness saw roles started during a leader election exit at once with `jetstream request
/// timed out`, to be started again by the harness.
#[tokio::test]
async fn a_process_starting_while_the_cluster_is_down_waits_for_it() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let mut nodes = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || cluster(&dir)
    })
    .await
    .expect("the start task ends");
    let url = nodes
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let client = chronicle_bus::connect(&url).await.expect("connect");
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(1));
    chronicle_bus::await_events_stream(&js, 3, Duration::from_secs(60))
        .await
        .expect("the stream is provisioned once the cluster has formed");

    for node in &mut nodes {
        node.kill();
    }
    assert!(
        chronicle_bus::ensure_events_stream_with(&js, 3)
            .await
            .is_err(),
        "with every node down the stream cannot be provisioned"
    );
    let starting = tokio::spawn({
        let js = js.clone();
        async move { chronicle_bus::await_events_stream(&js, 3, Duration::from_secs(60)).await }
    });
    // Long enough for attempts to fail (each gives up after the 1 s request timeout).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!starting.is_finished(), "it waits instead of failing");
    let _nodes = tokio::task::spawn_blocking(move || {
        for node in &mut nodes {
            node.restart().expect("the node starts again");
        }
        nodes
    })
    .await
    .expect("the restart task ends");
    let stream = starting
        .await
        .expect("the task ends")
        .expect("the stream is provisioned once the cluster is back");
    assert_eq!(stream.cached_info().config.num_replicas, 3);
}
