//! Stop signals (CRI 1.33+): the config's `stop_signal` over the image's StopSignal over
//! SIGTERM, reported in ContainerStatus and sent by StopContainer.

use std::time::{Duration, Instant};

use crius::cri;
use tonic::Code;

use crate::containers::{
    busybox, container_config, create, remove_all, run, start_pod, state, stop, wait_for_log,
};
use crate::harness::Daemon;
use crate::images::pull;
use crate::registry::TestRegistry;

/// Traps the signals the test sends and writes which one came, then exits 0.
const TRAPPER: &str = "for s in USR1 USR2 TERM 37; do trap \"echo got $s; exit 0\" $s; done; \
                       echo ready; while :; do sleep 0.1; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_stop_signal_is_reported_and_sent() {
    let stop_image = TestRegistry::get().image("stopsignal").reference.clone();
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    pull(&daemon, &stop_image).await.unwrap();
    let pod = start_pod(&daemon, "stopsignals", |_| {}).await;

    // (name, image, config's signal, reported, what the container got)
    let cases = [
        (
            "config",
            &stop_image,
            cri::Signal::Sigusr2,
            cri::Signal::Sigusr2,
            "got USR2",
        ),
        (
            "image",
            &stop_image,
            cri::Signal::RuntimeDefault,
            cri::Signal::Sigusr1,
            "got USR1",
        ),
        (
            "default",
            &busybox(),
            cri::Signal::RuntimeDefault,
            cri::Signal::Sigterm,
            "got TERM",
        ),
        (
            "realtime",
            &busybox(),
            cri::Signal::Sigrtminplus3,
            cri::Signal::Sigrtminplus3,
            "got 37",
        ),
    ];
    let mut ids = Vec::new();
    for (name, image, signal, _, _) in &cases {
        let mut config = container_config(name, &["sh", "-c", TRAPPER]);
        config.image.as_mut().unwrap().image = image.to_string();
        config.stop_signal = *signal as i32;
        let id = run(&daemon, &pod, config).await;
        wait_for_log(&pod.logs.join(format!("{name}.log")), "ready").await;
        ids.push(id);
    }
    // The records keep the signal across a restart of the daemon.
    daemon.stop();
    daemon.spawn().await;
    for ((name, _, _, reported, got), id) in cases.iter().zip(&ids) {
        let status = state(&daemon, id).await;
        assert_eq!(status.stop_signal, *reported as i32, "{name}");
        let began = Instant::now();
        stop(&daemon, id, 30).await.unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{name}: the stop signal was not the one trapped"
        );
        let status = state(&daemon, id).await;
        assert_eq!(status.exit_code, 0, "{name}");
        assert_eq!(
            status.stop_signal, *reported as i32,
            "{name} after the stop"
        );
        wait_for_log(&pod.logs.join(format!("{name}.log")), got).await;
    }

    // A value the CRI does not define is the caller's error, and nothing is made.
    let mut bad = container_config("bad", &["true"]);
    bad.stop_signal = 99;
    let err = create(&daemon, &pod, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("config.stop_signal"), "{err:?}");
    remove_all(&daemon, &pod).await;
}
