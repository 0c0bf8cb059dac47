//! The soak: the delivery checker of `tests/pods.rs` on three pods behind nginx, at volume, with
//! pods restarted throughout (alternately drained with SIGTERM and killed with SIGKILL, each
//! started again). CI runs it small; the long run is one command (docs/reliability.md):
//!
//! ```sh
//! CONFAB_SOAK_MESSAGES=1000000 cargo test --release --test soak -- --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use common::User;
use common::checker::{self, Load};
use common::fleet::Fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_pods_restarted_throughout() {
    let total: usize = std::env::var("CONFAB_SOAK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let writers_n = 8;
    let per_writer = total.div_ceil(writers_n);
    let mut fleet = Fleet::start(3).await;
    let mut writers = Vec::new();
    for i in 0..writers_n {
        writers.push(fleet.user(&format!("writer{i}")).await);
    }
    let readers = vec![fleet.user("reader0").await, fleet.user("reader1").await];
    let mut rooms = Vec::new();
    for r in 0..4 {
        let id = writers[0].create_room(&format!("soak{r}"), "public").await;
        for u in writers.iter().skip(1).chain(readers.iter()) {
            u.join(&id).await;
        }
        rooms.push(id);
    }
    let load = Load {
        per_writer,
        interval: Duration::from_millis(2),
    };
    let started = Instant::now();
    let addr = fleet.addr();
    let watcher: User = readers[0].clone();
    let watched = rooms.clone();
    let mut restarts = 0;
    let during = async {
        // Restart a pod every two seconds until 95% of the messages are in.
        let goal = (per_writer * writers_n) as i64 * 95 / 100;
        let mut turn = 0usize;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let pod = turn % 3;
            if turn.is_multiple_of(2) {
                fleet.sigterm(pod);
                assert!(fleet.wait_exit(pod, Duration::from_secs(30)).await);
            } else {
                fleet.kill9(pod).await;
            }
            fleet.start_pod(pod).await;
            turn += 1;
            restarts += 1;
            let mut done = 0;
            for r in &watched {
                done += checker::last_seq(&watcher, r).await;
            }
            if done >= goal {
                break;
            }
        }
    };
    let reports = checker::run(addr, &rooms, &writers, &readers, load, during).await;
    let v = checker::verify(&readers[0], &rooms, &reports).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "soak: {} messages acked, {} deliveries checked ({} of them paged from history after \
         a resume missed over 1000), {} pod restarts, {} reconnects, longest outage {:?}, \
         {:.0} s ({:.0} messages/s): 0 lost, 0 gaps, 0 duplicates",
        v.acked,
        v.delivered,
        v.paged,
        restarts,
        v.reconnects,
        v.longest_outage,
        secs,
        v.acked as f64 / secs
    );
    assert_eq!(v.acked, per_writer * writers_n);
    assert!(
        restarts >= 1,
        "at least one pod was restarted during the run"
    );
}
