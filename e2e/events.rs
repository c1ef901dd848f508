//! GetContainerEvents: a container's whole life, in order, to every subscriber.

use std::time::Duration;

use crius::cri;
use tokio_stream::StreamExt;

use crate::containers::{busybox, container_config, remove_all, run, start_pod};
use crate::harness::Daemon;
use crate::images::pull;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_a_containers_life_for_every_subscriber() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "events", |_| {}).await;
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let stream = daemon
            .runtime()
            .await
            .unwrap()
            .get_container_events(cri::GetEventsRequest {})
            .await
            .unwrap()
            .into_inner();
        subscribers.push(stream);
    }
    let id = run(
        &daemon,
        &pod,
        container_config("brief", &["sh", "-c", "sleep 0.3"]),
    )
    .await;
    // The exit is noticed without anyone asking for the container's status.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    daemon
        .runtime()
        .await
        .unwrap()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    use cri::ContainerEventType as T;
    let expected = [
        T::ContainerCreatedEvent,
        T::ContainerStartedEvent,
        T::ContainerStoppedEvent,
        T::ContainerDeletedEvent,
    ];
    for stream in &mut subscribers {
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("an event within 5s")
                .unwrap()
                .unwrap();
            assert_eq!(event.container_id, id);
            assert!(event.created_at > 0);
            if event.container_event_type != T::ContainerDeletedEvent as i32 {
                let pod_status = event.pod_sandbox_status.as_ref().unwrap();
                assert_eq!(pod_status.id, pod.id);
                assert!(event.containers_statuses.iter().any(|c| c.id == id));
            }
            seen.push(event.container_event_type);
        }
        assert_eq!(seen, expected.map(|t| t as i32));
    }
    remove_all(&daemon, &pod).await;
}
