//! Pull benchmark: a ~200 MB multi-layer image from the local test registry, pulled through the
//! CRI by crius and by containerd 1.6 (Debian's package, its own root and socket), each from a
//! cold store, alternating, several runs. Prints the median of each and the ratio.
//!
//! Run with `bash hack/bench.sh` (it starts the registry, pushes the image and installs
//! containerd). Not a timed test: it measures and reports, it does not assert.

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;
#[allow(dead_code)]
mod peer;

use std::time::Duration;

use harness::Daemon;
use peer::{Containerd, median, timed_pull};

const RUNS: usize = 5;

fn bench_image() -> (String, String) {
    let path = std::env::var("CRIUS_TEST_IMAGES").expect("run through hack/bench.sh");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let bench = &meta["images"]["bench"];
    (
        bench["ref"]
            .as_str()
            .expect("bench image pushed")
            .to_string(),
        meta["registry"].as_str().unwrap().to_string(),
    )
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let (image, registry) = bench_image();
    let mut crius_times = Vec::new();
    let mut containerd_times = Vec::new();
    // Stores are deleted only at the end: deleting hundreds of MB between runs makes ext4's
    // inode allocation slow for the next run (it avoids recently freed inodes), which would
    // measure the clean-up rather than the pull.
    let mut stopped = Vec::new();
    for run in 0..RUNS {
        let mut crius = Daemon::start("").await;
        let t = timed_pull(&crius.socket(), &image).await;
        crius.stop();
        crius_times.push(t);

        let mut containerd = Containerd::start(&registry, "").await;
        let c = timed_pull(&containerd.socket(), &image).await;
        containerd.stop();
        containerd_times.push(c);
        println!("run {}: crius {} containerd {}", run + 1, secs(t), secs(c));
        stopped.push((crius, containerd));
    }
    let (a, b) = (median(crius_times), median(containerd_times));
    println!(
        "pull {image}: median of {RUNS} cold pulls: crius {}, containerd 1.6 {}; containerd/crius = {:.2}x",
        secs(a),
        secs(b),
        b.as_secs_f64() / a.as_secs_f64()
    );
    drop(stopped);
}
