//! The list-streaming RPCs (CRI 1.36): the unary lists' items and filters, in messages that
//! each stay within the 16 MiB kubelet accepts, however long the list.

use std::collections::BTreeSet;
use std::time::Instant;

use crius::cri;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::containers::{busybox, container_config, create, remove_all, start_pod};
use crate::harness::Daemon;
use crate::images::pull;

/// kubelet's (and crius's) largest gRPC message.
const MESSAGE_LIMIT: usize = 16 << 20;
/// 40 containers with a 512 KiB annotation each list to 20 MiB, over the limit. kubelet's
/// case is 10,000 exited containers of ~2 KiB each; big annotations reach the same size with
/// 40 CreateContainers instead of 10,000 containers run to exit, and keep the test fast.
const BIG_CONTAINERS: usize = 40;
const ANNOTATION_BYTES: usize = 512 << 10;

/// Every message of a stream, failing on an error.
async fn collect<T>(stream: tonic::Streaming<T>) -> Vec<T> {
    stream
        .collect::<Result<Vec<T>, tonic::Status>>()
        .await
        .unwrap()
}

fn sizes<T: Message>(messages: &[T]) -> Vec<usize> {
    messages.iter().map(Message::encoded_len).collect()
}

fn ids(containers: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    containers.into_iter().collect()
}

fn assert_too_large(err: &tonic::Status, what: &str) {
    // tonic names a message over the limit OUT_OF_RANGE (grpc-go: RESOURCE_EXHAUSTED).
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{what}: {err:?}"
    );
    assert!(err.message().contains("too large"), "{what}: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_over_the_message_limit_arrives_whole_in_chunks() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "streams", |_| {}).await;
    // Before the big containers: a pod's stats carry its containers' stats, so this pod's
    // would then be one item over the limit, which no chunking can split.
    assert_small_streams_match_unary(&daemon, &pod.id).await;
    let began = Instant::now();
    let mut big = BTreeSet::new();
    for i in 0..BIG_CONTAINERS {
        let mut config = container_config(&format!("big{i}"), &["true"]);
        config.labels.insert("size".into(), "big".into());
        let filler = char::from(b'a' + (i % 26) as u8).to_string();
        config
            .annotations
            .insert("filler".into(), filler.repeat(ANNOTATION_BYTES));
        big.insert(create(&daemon, &pod, config).await.unwrap());
    }
    let mut small = container_config("small", &["true"]);
    small.labels.insert("size".into(), "small".into());
    let small = create(&daemon, &pod, small).await.unwrap();
    eprintln!(
        "{} containers of {} KiB annotations created in {:?}",
        BIG_CONTAINERS,
        ANNOTATION_BYTES >> 10,
        began.elapsed()
    );
    let mut rt = daemon.runtime().await.unwrap();

    // The unary lists cannot carry it.
    let err = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap_err();
    assert_too_large(&err, "ListContainers");
    eprintln!("ListContainers: {:?}: {}", err.code(), err.message());
    let err = rt
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .unwrap_err();
    assert_too_large(&err, "ListContainerStats");

    // The stream does: every container once, in messages within the limit.
    let began = Instant::now();
    let messages = collect(
        rt.stream_containers(cri::StreamContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let took = began.elapsed();
    let sizes = sizes(&messages);
    eprintln!(
        "StreamContainers: {} messages of {:?} bytes ({} in all) in {took:?}",
        messages.len(),
        sizes,
        sizes.iter().sum::<usize>()
    );
    assert!(sizes.iter().sum::<usize>() > MESSAGE_LIMIT);
    assert!(sizes.iter().all(|s| *s < MESSAGE_LIMIT), "{sizes:?}");
    assert!(messages.len() > 1);
    let streamed: Vec<String> = messages
        .into_iter()
        .flat_map(|m| m.containers)
        .map(|c| {
            if c.id != small {
                assert_eq!(c.annotations["filler"].len(), ANNOTATION_BYTES);
            }
            c.id
        })
        .collect();
    assert_eq!(streamed.len(), BIG_CONTAINERS + 1, "each container once");
    let mut all = big.clone();
    all.insert(small.clone());
    assert_eq!(ids(streamed), all);

    let stats = collect(
        rt.stream_container_stats(cri::StreamContainerStatsRequest { filter: None })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let stats_ids = stats
        .into_iter()
        .flat_map(|m| m.container_stats)
        .map(|s| s.attributes.unwrap().id);
    assert_eq!(ids(stats_ids), all);

    // Filters as the unary lists': by label, by pod, by id.
    let by_label = cri::ContainerFilter {
        label_selector: [("size".to_string(), "small".to_string())].into(),
        ..Default::default()
    };
    let unary = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(by_label.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    let streamed: Vec<cri::Container> = collect(
        rt.stream_containers(cri::StreamContainersRequest {
            filter: Some(by_label),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|m| m.containers)
    .collect();
    assert_eq!(streamed, unary);
    assert_eq!(unary.len(), 1);
    let one = big.first().unwrap().clone();
    let by_id = cri::ContainerStatsFilter {
        id: one.clone(),
        pod_sandbox_id: pod.id.clone(),
        ..Default::default()
    };
    let streamed: Vec<String> = collect(
        rt.stream_container_stats(cri::StreamContainerStatsRequest {
            filter: Some(by_id),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|m| m.container_stats)
    .map(|s| s.attributes.unwrap().id)
    .collect();
    assert_eq!(streamed, vec![one]);
    let nothing = collect(
        rt.stream_containers(cri::StreamContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: "no-such-pod".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert!(
        nothing.is_empty(),
        "an empty list is no message: {nothing:?}"
    );
    remove_all(&daemon, &pod).await;
}

/// The pod, pod stats, pod metrics and image streams give what their unary lists give.
async fn assert_small_streams_match_unary(daemon: &Daemon, pod_id: &str) {
    let mut rt = daemon.runtime().await.unwrap();
    let unary = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    let streamed: Vec<cri::PodSandbox> = collect(
        rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: None })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|m| m.pod_sandboxes)
    .collect();
    assert_eq!(streamed, unary);
    assert_eq!(unary.len(), 1);

    let filter = cri::PodSandboxStatsFilter {
        id: pod_id.to_string(),
        ..Default::default()
    };
    let streamed = collect(
        rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    let pods: Vec<String> = streamed
        .into_iter()
        .flat_map(|m| m.pod_sandbox_stats)
        .map(|s| s.attributes.unwrap().id)
        .collect();
    assert_eq!(pods, vec![pod_id.to_string()]);

    let unary = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let streamed: Vec<cri::PodSandboxMetrics> = collect(
        rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|m| m.pod_sandbox_metrics)
    .collect();
    let pod_ids = |metrics: &[cri::PodSandboxMetrics]| -> Vec<String> {
        metrics.iter().map(|m| m.pod_sandbox_id.clone()).collect()
    };
    assert_eq!(pod_ids(&streamed), pod_ids(&unary));
    assert_eq!(pod_ids(&unary), vec![pod_id.to_string()]);

    let mut images = daemon.image().await.unwrap();
    let unary = images
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    let streamed: Vec<cri::Image> = collect(
        images
            .stream_images(cri::StreamImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|m| m.images)
    .collect();
    assert_eq!(streamed, unary);
    assert_eq!(unary.len(), 1);
}
