//! The embedded store: durable across restarts and `kill -9`, and exclusive to one process.

use std::{collections::BTreeSet, time::Duration};

use reqwest::StatusCode;

use crate::helpers::{ServiceProcess, TestApp, process};

#[tokio::test(flavor = "multi_thread")]
async fn counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestApp::spawn_on_data_dir(dir.path().to_path_buf(), &[]).await;
    for _ in 0..7 {
        first.client.visit().await;
    }
    first.stop().await;

    let second = TestApp::spawn_on_data_dir(dir.path().to_path_buf(), &[]).await;

    assert_eq!(second.client.visit().await, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_visits_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut service = ServiceProcess::start(&["--data-dir", data]).await;

    // Visits in flight from many clients when the process is killed.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = service.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            loop {
                let response = reqwest::Client::new()
                    .get(format!("{}/", client.base))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                let Ok(response) = response else { break };
                if response.status() != StatusCode::OK {
                    break;
                }
                match response.text().await {
                    Ok(body) => acknowledged.push(stackdemo::verify::parse_count(&body).unwrap()),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    let probe = service.client.clone();
    crate::helpers::wait_until("visits under way", Duration::from_secs(5), || {
        let probe = probe.clone();
        async move { probe.total().await >= 300 }
    })
    .await;
    service.signal("KILL");
    service.wait(Duration::from_secs(5));
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let distinct: BTreeSet<u64> = acknowledged.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        acknowledged.len(),
        "a number was handed out twice"
    );
    let highest = *distinct.last().expect("some visits were acknowledged");

    let restarted = ServiceProcess::start(&["--data-dir", data]).await;
    let next = restarted.client.visit().await;

    assert!(
        next > highest,
        "visit {highest} was acknowledged but the store restarted at {next}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let _first = ServiceProcess::start(&["--data-dir", data]).await;

    let second = process::run(&["--listen", "127.0.0.1:0", "--data-dir", data], &[]);

    assert_eq!(second.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("STACKDEMO_DATA_DIR"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_visits_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let service = ServiceProcess::start(&["--data-dir", dir.path().to_str().unwrap()]).await;

    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = service.client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                client.visit().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let metric = "stackdemo_embedded_commit_visits";
    let visits = service.client.metric(&format!("{metric}_sum")).await;
    let commits = service.client.metric(&format!("{metric}_count")).await;
    assert_eq!(
        visits, 1280.0,
        "every acknowledged visit was committed once"
    );
    assert!(
        commits < visits,
        "{visits} visits took {commits} transactions: none was shared"
    );
    assert_eq!(service.client.visit().await, 64 * 20 + 1);
}
