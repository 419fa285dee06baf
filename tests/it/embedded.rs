//! The embedded store: durable across restarts and `kill -9`, exclusive to one process,
//! never counting a visit it answered 503, and never serving from a file it cannot trust:
//! an empty or damaged file is refused at start, a full disk makes it not ready until
//! space is freed.

use std::{path::Path, time::Duration};

use nix::sys::signal::Signal;
use reqwest::StatusCode;

use crate::helpers::{
    Load, ServiceProcess, TestApp, allowed,
    disk::{FreezableDisk, SmallDisk, fill},
    limits::{self, PROCESS_START, for_visits},
    process, wait_until,
};

/// How long the writer waits before it opens the database again after a failed write.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

const DATA_FILE: &str = "stackdemo.redb";

fn assert_refused_naming_the_data_dir(output: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A data folder holding `visits` visits, left by a service that stopped.
async fn data_with_visits(dir: &Path, visits: i64) {
    let mut app = TestApp::spawn_on_data_dir(dir.to_path_buf(), &[]).await;
    for _ in 0..visits {
        app.client.visit().await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    data_with_visits(dir.path(), 7).await;

    let second = TestApp::spawn_on_data_dir(dir.path().to_path_buf(), &[]).await;

    assert_eq!(second.client.visit().await, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_visits_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut service = ServiceProcess::start(&["--data-dir", data]).await;
    let load = Load::start(&service.client, 16);
    load.wait_for_acknowledged(300, for_visits(300), || async { String::new() })
        .await;

    service.signal(Signal::SIGKILL);
    service.wait(allowed(PROCESS_START)).await;
    let report = load.stop().await.report();
    let restarted = ServiceProcess::start(&["--data-dir", data]).await;
    let next = restarted.client.visit().await;

    assert_eq!(report.duplicate_counts, 0, "a number was handed out twice");
    let highest = report.highest_count.expect("visits were acknowledged");
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

    let second = process::run(&["--listen", "127.0.0.1:0", "--data-dir", data], &[]).await;

    assert_refused_naming_the_data_dir(&second);
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another process"));
}

/// A second service on another folder that holds a hard link to the running service's
/// data file (as `cp -al` and rsnapshot make) is refused before it opens the file, and
/// the first counts on: opening the file for writing would count, for the first, as
/// another process writing to its file, and stop it for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_a_hard_link_to_the_data_file_is_refused_and_the_first_counts_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let first = ServiceProcess::start(&["--data-dir", data]).await;
    first.client.visit().await;
    let linked = tempfile::tempdir().unwrap();
    std::fs::hard_link(dir.path().join(DATA_FILE), linked.path().join(DATA_FILE)).unwrap();
    let other = linked.path().to_str().unwrap();

    let second = process::run(&["--listen", "127.0.0.1:0", "--data-dir", other], &[]).await;

    assert_refused_naming_the_data_dir(&second);
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another process"));
    for expected in 2..=4 {
        let answer = first.client.try_visit().await;
        assert_eq!(answer.count, Some(expected), "{answer:?}\n{}", first.log());
    }
    let ready = first.client.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK, "{}", first.log());
}

/// The data file deleted while the service runs: until the service has put it back (it is
/// paused here, so that it cannot), a second service on the folder is refused all the
/// same; it would have made a new file and answered numbers the first had answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_is_refused_while_the_data_file_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let first = ServiceProcess::start(&["--data-dir", data]).await;
    first.client.visit().await;

    first.signal(Signal::SIGSTOP);
    std::fs::remove_file(dir.path().join("stackdemo.redb")).unwrap();
    let second = process::run(&["--listen", "127.0.0.1:0", "--data-dir", data], &[]).await;
    first.signal(Signal::SIGCONT);

    assert_refused_naming_the_data_dir(&second);
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another process"));
    first
        .client
        .wait_ready(allowed(Duration::from_secs(2)))
        .await;
    assert_eq!(first.client.visit().await, 2, "the first counts on");
}

/// The data folder, or a folder above it, moved away while the service runs: until the
/// service has made it again at its path (it is paused here, so that it cannot), a
/// second service on the path is refused all the same. The folder's own lock went with
/// the folder; the folder above the one moved still names the place, so that the second
/// service does not make the folders again and count from 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_is_refused_while_the_data_folder_or_one_above_it_is_moved_away() {
    let dir = tempfile::tempdir().unwrap();
    let above = dir.path().join("srv");
    let data = above.join("stackdemo").join("data");
    let data_str = data.to_str().unwrap();
    let first = ServiceProcess::start(&["--data-dir", data_str]).await;
    first.client.visit().await;

    let mut refusals = Vec::new();
    for moved in [data.clone(), above.join("stackdemo"), above.clone()] {
        first.signal(Signal::SIGSTOP);
        let away = dir.path().join("moved");
        std::fs::rename(&moved, &away).unwrap();
        let second = process::run(&["--listen", "127.0.0.1:0", "--data-dir", data_str], &[]).await;
        // Put back as it was: the second service may have made the folders again.
        if moved.exists() {
            std::fs::remove_dir_all(&moved).unwrap();
        }
        std::fs::rename(&away, &moved).unwrap();
        first.signal(Signal::SIGCONT);
        refusals.push((moved, second));
    }

    for (moved, second) in &refusals {
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(
            stderr.contains("in use by another process"),
            "{} moved: {stderr}",
            moved.display()
        );
        assert_refused_naming_the_data_dir(second);
    }
    first
        .client
        .wait_ready(allowed(FILE_CHECK + REOPEN_DELAY))
        .await;
    assert_eq!(first.client.visit().await, 2, "the first counts on");
}

/// As above, with the data folder a mount of its own (a disk, a volume) and the folder
/// it is in moved away: that folder's mount still names the place.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_is_refused_while_the_folder_holding_a_mounted_data_folder_is_moved() {
    let dir = tempfile::tempdir().unwrap();
    let volume = tempfile::tempdir().unwrap();
    let holder = dir.path().join("holder");
    let data = holder.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let _mounted = BindMount::new(volume.path(), &data);
    let data_str = data.to_str().unwrap();
    let first = ServiceProcess::start(&["--data-dir", data_str]).await;
    first.client.visit().await;

    first.signal(Signal::SIGSTOP);
    let away = dir.path().join("moved");
    std::fs::rename(&holder, &away).unwrap();
    let second = process::run(&["--listen", "127.0.0.1:0", "--data-dir", data_str], &[]).await;
    if holder.exists() {
        std::fs::remove_dir_all(&holder).unwrap();
    }
    std::fs::rename(&away, &holder).unwrap();
    first.signal(Signal::SIGCONT);

    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert_refused_naming_the_data_dir(&second);
    assert_eq!(first.client.visit().await, 2, "the first counts on");
}

/// Two services on one path in different mount namespaces (each its own `/tmp`, as
/// systemd's `PrivateTmp` gives) count in different folders, though in one network
/// namespace: the place is locked by the folders on the data folder's mount, not by the
/// path above it, which names different folders in each.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_path_in_another_mount_namespace_is_another_place() {
    let disk = SmallDisk::mount(4 * 1024 * 1024);
    let data = disk.path.join("data");
    let first = ServiceProcess::start(&["--data-dir", data.to_str().unwrap()]).await;
    assert_eq!(first.client.visit().await, 1);

    let port = crate::helpers::free_port();
    let script = format!(
        "mount -t tmpfs other '{}' && exec '{}' --listen 127.0.0.1:{port} --data-dir '{}'",
        disk.path.display(),
        std::path::Path::new(&process::binary()).display(),
        data.display()
    );
    let second = tokio::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare runs (util-linux: apt-get install util-linux)");
    let second = std::sync::Mutex::new(second);
    let exited = || {
        second
            .lock()
            .unwrap()
            .try_wait()
            .is_ok_and(|exit| exit.is_some())
    };
    let client = crate::helpers::TestClient::new(format!("127.0.0.1:{port}").parse().unwrap());
    wait_until(
        "the service in the other mount namespace to answer",
        allowed(PROCESS_START),
        || async { exited() || client.answers_ok("/healthz").await },
    )
    .await;
    if exited() {
        let output = second
            .into_inner()
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        panic!(
            "the second service exited: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    assert_eq!(client.visit().await, 1, "a folder of its own");
    assert_eq!(first.client.visit().await, 2);
}

/// A bind mount, undone on drop.
struct BindMount(std::path::PathBuf);

impl BindMount {
    fn new(from: &Path, at: &Path) -> Self {
        nix::mount::mount(
            Some(from),
            at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("a bind mount (the tests run as root)");
        Self(at.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// As above, with the second service given the folder through a bind mount of the folder
/// it is in: another path, the same place.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_is_refused_through_a_bind_mount_while_the_folder_is_moved_away() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent");
    let bound = dir.path().join("bound");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::create_dir_all(&bound).unwrap();
    let data = parent.join("data");
    let first = ServiceProcess::start(&["--data-dir", data.to_str().unwrap()]).await;
    first.client.visit().await;
    let _bound = BindMount::new(&parent, &bound);

    first.signal(Signal::SIGSTOP);
    std::fs::rename(&data, dir.path().join("moved")).unwrap();
    let through = bound.join("data");
    let second = process::run(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            through.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    first.signal(Signal::SIGCONT);

    assert_refused_naming_the_data_dir(&second);
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another process"));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_visits_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let service = ServiceProcess::start(&["--data-dir", dir.path().to_str().unwrap()]).await;

    let load = Load::start(&service.client, 64);
    load.wait_for_acknowledged(1280, for_visits(1280), || async { String::new() })
        .await;
    let report = load.stop().await.report();

    let metric = "stackdemo_embedded_commit_visits";
    let visits = service.client.metric(&format!("{metric}_sum")).await;
    let commits = service.client.metric(&format!("{metric}_count")).await;
    assert_eq!(
        visits, report.succeeded as f64,
        "every acknowledged visit was committed once"
    );
    assert!(
        commits < visits,
        "{visits} visits took {commits} transactions: none was shared"
    );
}

#[tokio::test]
async fn an_empty_data_file_is_refused_not_taken_for_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DATA_FILE), b"").unwrap();

    let output = process::run(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    )
    .await;

    assert_refused_naming_the_data_dir(&output);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a valid database"));
}

#[tokio::test]
async fn an_empty_data_file_given_by_the_environment_is_refused_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DATA_FILE), b"").unwrap();

    let output = process::run(
        &["--listen", "127.0.0.1:0"],
        &[("STACKDEMO_DATA_DIR", dir.path().to_str().unwrap())],
    )
    .await;

    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("STACKDEMO_DATA_DIR"));
}

/// Damage of many shapes (zeroed ranges, flipped bits, a cut-off file) at generated
/// places: the service either refuses the file at start, with exit code 2 and a message,
/// or serves correctly from it. It never panics, and never serves numbers that repeat.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_data_file_is_refused_at_start_or_served_correctly_never_with_a_panic() {
    let pristine = tempfile::tempdir().unwrap();
    data_with_visits(pristine.path(), 25).await;
    let original = std::fs::read(pristine.path().join(DATA_FILE)).unwrap();
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut refused, mut served) = (0, 0);

    for case in 0..24 {
        let mut bytes = original.clone();
        let damage = match case % 3 {
            0 => {
                let start = rng.usize(..bytes.len());
                let end = (start + rng.usize(1..4096)).min(bytes.len());
                bytes[start..end].fill(0);
                format!("zeroed {start}..{end}")
            }
            1 => {
                let at = rng.usize(..bytes.len());
                let bit = rng.u8(0..8);
                bytes[at] ^= 1 << bit;
                format!("flipped bit {bit} of byte {at}")
            }
            _ => {
                let keep = rng.usize(..bytes.len());
                bytes.truncate(keep);
                format!("cut to {keep} bytes")
            }
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DATA_FILE), &bytes).unwrap();
        let data = dir.path().to_str().unwrap();

        // An integrity check of a small file on start: within the start of any process.
        let started = tokio::time::timeout(
            allowed(PROCESS_START),
            ServiceProcess::try_start(&["--data-dir", data]),
        )
        .await
        .expect("the service starts or exits in time");
        match started {
            Err(output) => {
                assert_refused_naming_the_data_dir(&output);
                refused += 1;
            }
            Ok(mut service) => {
                // Serving from it: every visit counts on from the old total, or is
                // refused while the service says it is not ready.
                for _ in 0..5 {
                    let answer = service.client.try_visit().await;
                    match answer.status {
                        Some(StatusCode::OK) => {
                            let count = answer.count.unwrap();
                            assert!(count > 25, "{damage} (seed {seed}): counted from {count}");
                        }
                        Some(StatusCode::SERVICE_UNAVAILABLE) => assert_ne!(
                            service.client.ready_status().await,
                            StatusCode::OK,
                            "{damage} (seed {seed}): 503 while ready"
                        ),
                        other => panic!("{damage} (seed {seed}): {other:?} {answer:?}"),
                    }
                }
                if !service.running() {
                    let status = service.wait(allowed(PROCESS_START)).await;
                    assert_ne!(status.code(), Some(101), "{damage} (seed {seed}): panicked");
                }
                served += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "no damage was refused (seed {seed}, {served} served)"
    );
}

/// A disk that fills up: visits are refused and the service reports not-ready, then
/// counts on by itself once space is freed, without a restart and without counting what
/// it refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_makes_the_store_not_ready_until_space_is_freed() {
    let disk = SmallDisk::mount(4 * 1024 * 1024);
    let data = disk.path.join("data");
    let service =
        ServiceProcess::start(&["--data-dir", data.to_str().unwrap(), "--workers", "1"]).await;
    assert_eq!(service.client.visit().await, 1);
    let filler = disk.path.join("filler");
    fill(&filler).await;

    let mut acknowledged = 1;
    let mut refused = false;
    for _ in 0..20_000 {
        let answer = service.client.try_visit().await;
        match answer.status {
            Some(StatusCode::OK) => {
                acknowledged += 1;
                assert_eq!(answer.count, Some(acknowledged));
            }
            Some(StatusCode::SERVICE_UNAVAILABLE) => {
                refused = true;
                break;
            }
            other => panic!("{other:?} {answer:?}"),
        }
    }
    assert!(refused, "the full disk never refused a visit");
    assert_eq!(
        service.client.ready_status().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while writes fail"
    );

    std::fs::remove_file(&filler).unwrap();
    // The writer tries again every second; a write of no visits tells it the disk has
    // room.
    let deadlines = limits::deadlines(&[]);
    service
        .client
        .wait_ready(allowed(REOPEN_DELAY + deadlines.store))
        .await;

    assert_eq!(
        service.client.visit().await,
        acknowledged + 1,
        "counting resumed where it was; nothing refused was counted"
    );
}

/// The process's file size limit reached by the data file: a full disk, refused and
/// counted on once the limit is lifted. The signal a write past the limit brings
/// (SIGXFSZ) is not the end of the process.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_size_limit_is_a_full_disk_not_the_end_of_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut service =
        ServiceProcess::start(&["--data-dir", data, "--workers", "1", "--rate-limit", "off"]).await;
    assert_eq!(service.client.visit().await, 1);
    let file = dir.path().join("stackdemo.redb");
    let size = std::fs::metadata(&file).unwrap().len();
    service.set_soft_limit("fsize", &size.to_string());

    // New counters until the file must grow.
    let mut refused = None;
    for n in 0..20_000 {
        let answer = service.client.try_visit_at(&format!("/c/grow/{n}")).await;
        match answer.status {
            Some(StatusCode::OK) => assert_eq!(answer.count, Some(1), "{answer:?}"),
            _ => {
                refused = Some(answer);
                break;
            }
        }
    }
    let refused = refused.expect("the file never grew past the limit");
    assert!(service.running(), "the process ended: {}", service.log());
    assert_eq!(refused.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(
        refused.body.contains("counter store's disk is full"),
        "{refused:?}"
    );
    assert_eq!(
        service.client.ready_status().await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    service.set_soft_limit("fsize", "unlimited");
    let deadlines = limits::deadlines(&[]);
    service
        .client
        .wait_ready(allowed(REOPEN_DELAY + deadlines.store))
        .await;
    assert_eq!(
        service.client.visit().await,
        2,
        "counting resumed where it was"
    );
}

/// A data file deleted while a full disk has made a commit fail (the database then refuses
/// to be read until it is opened again): once space is freed, the service writes the
/// counts back at the path from the file it still holds open, and counts on.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_deleted_after_a_failed_commit_is_written_back_once_space_is_freed() {
    let disk = SmallDisk::mount(4 * 1024 * 1024);
    let data = disk.path.join("data");
    let file = data.join("stackdemo.redb");
    let mut service = ServiceProcess::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--workers",
        "1",
        "--rate-limit",
        "off",
    ])
    .await;
    // Counters enough for pages the restarted service has not read yet: the database
    // serves pages it holds in memory even once it refuses the disk.
    for page in 0..500 {
        let answer = service.client.get(&format!("/c/page-{page}")).await;
        assert_eq!(answer.status(), StatusCode::OK);
    }
    service.restart().await;
    assert_eq!(service.client.visit().await, 1);
    let filler = disk.path.join("filler");
    fill(&filler).await;
    // New counters until one needs room the disk does not have.
    let mut made = 0;
    loop {
        let answer = service.client.get(&format!("/c/new-{made}")).await;
        match answer.status() {
            StatusCode::OK => made += 1,
            StatusCode::SERVICE_UNAVAILABLE => break,
            other => panic!("{other}: {}", answer.text().await.unwrap_or_default()),
        }
        assert!(made < 20_000, "the full disk never refused a visit");
    }

    // Within the second before the writer opens the database again.
    std::fs::remove_file(&file).unwrap();
    std::fs::remove_file(&filler).unwrap();

    let deadlines = limits::deadlines(&[]);
    service
        .client
        .wait_ready(allowed(REOPEN_DELAY * 2 + deadlines.store))
        .await;
    assert!(file.exists(), "the data file is back at its path");
    assert_eq!(
        service.client.visit().await,
        2,
        "counting resumed where it was"
    );
    for kept in ["page-499".to_owned(), format!("new-{}", made.max(1) - 1)] {
        let read = service.client.get(&format!("/api/counters/{kept}")).await;
        assert_eq!(read.status(), StatusCode::OK, "{kept} is kept");
        let read: serde_json::Value = read.json().await.unwrap();
        assert_eq!(read["total"], 1, "{kept}: {read}");
    }
}

/// The number a service started anew on `data` gives its first visit, less one: the
/// total its data file holds. The service has exited when this returns (a process killed
/// on drop still holds the folder for a moment, and a next start would be refused).
async fn total_after_restart(data: &str) -> i64 {
    let mut restarted = ServiceProcess::start(&["--data-dir", data]).await;
    let total = restarted.client.visit().await - 1;
    restarted.signal(Signal::SIGKILL);
    restarted.wait(allowed(PROCESS_START)).await;
    total
}

/// What an operator may do to a data folder while the service runs, under load: the
/// service stops counting until it has written the counts it holds back to the configured
/// path, and a restart then counts on from there. No number is answered twice, and no
/// acknowledged one is lost.
async fn data_taken_away_under_load(take_away: impl AsyncFnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_str = data.to_str().unwrap();
    let args = ["--data-dir", data_str];
    let deadlines = limits::deadlines(&args);
    let mut service = ServiceProcess::start(&args).await;
    let load = Load::start(&service.client, 8);
    load.wait_for_acknowledged(200, for_visits(200), || async { String::new() })
        .await;

    take_away(&data).await;
    // Noticed at the next commit, or within a second when idle; put right a second
    // later.
    load.wait_for_acknowledged(
        200,
        allowed(FILE_CHECK + REOPEN_DELAY + deadlines.store * 2) + for_visits(200),
        || async { service.log() },
    )
    .await;
    let history = load.stop().await;
    let reported = in_doubt(&service).await;
    service.signal(Signal::SIGKILL);
    service.wait(allowed(PROCESS_START)).await;

    let end = total_after_restart(data_str).await;
    history.assert_counting_held(0, end, reported);
    assert!(
        tokio::fs::try_exists(data.join(DATA_FILE)).await.unwrap(),
        "the data file is back at the configured path"
    );
}

async fn in_doubt(service: &ServiceProcess) -> u64 {
    service
        .client
        .metric("stackdemo_visits_in_doubt_total")
        .await as u64
}

/// How often an idle writer looks whether its data file is still at the path.
const FILE_CHECK: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_deleted_while_serving_is_written_again_and_counting_goes_on() {
    data_taken_away_under_load(async |data| {
        tokio::fs::remove_file(data.join(DATA_FILE)).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_folder_moved_away_while_serving_is_made_again_and_counting_goes_on() {
    data_taken_away_under_load(async |data| {
        tokio::fs::rename(data, data.with_extension("old"))
            .await
            .unwrap();
    })
    .await;
}

/// An older copy of the data file put in its place (a backup restored by mistake): the
/// service neither counts from it nor overwrites it, and says why; once it is removed,
/// the service writes the counts it holds there and counts on.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_replaced_by_an_older_copy_is_not_counted_from() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--data-dir", data, "--workers", "1"];
    let deadlines = limits::deadlines(&args);
    let service = ServiceProcess::start(&args).await;
    for _ in 0..10 {
        service.client.visit().await;
    }
    let file = dir.path().join(DATA_FILE);
    let older = dir.path().join("older.redb");
    tokio::fs::copy(&file, &older).await.unwrap();
    for _ in 0..10 {
        service.client.visit().await;
    }

    tokio::fs::rename(&older, &file).await.unwrap();

    let client = &service.client;
    wait_until("not ready, saying why", allowed(FILE_CHECK), || async {
        client.readiness().await.contains("missing or replaced")
    })
    .await;
    // Past a second look: still refused, the older file untouched.
    let refused_until = std::time::Instant::now() + REOPEN_DELAY * 2;
    while std::time::Instant::now() < refused_until {
        let answer = client.try_visit().await;
        assert_eq!(
            answer.body,
            "Service Unavailable: counter store's data file is missing or replaced\n"
        );
    }
    assert!(
        service
            .log()
            .contains("holds less than this service has counted"),
        "the log says why: {}",
        service.log()
    );

    tokio::fs::remove_file(&file).await.unwrap();
    client
        .wait_ready(allowed(FILE_CHECK + REOPEN_DELAY + deadlines.store))
        .await;
    assert_eq!(
        client.visit().await,
        21,
        "counting goes on from its own total"
    );
}

/// An immutable data file (`chattr +i`) cannot be opened for writing: refused at start as
/// a permission problem, not taken for a damaged database.
#[tokio::test(flavor = "multi_thread")]
async fn an_immutable_data_file_is_refused_as_a_permission_problem() {
    let dir = tempfile::tempdir().unwrap();
    data_with_visits(dir.path(), 3).await;
    let file = dir.path().join(DATA_FILE);
    // Where lsattr runs, chattr (its sibling in e2fsprogs) does.
    crate::helpers::require_program("lsattr", "LSATTR", "e2fsprogs").await;
    let chattr = "chattr";
    let set = |flag: &'static str| {
        tokio::process::Command::new(chattr)
            .arg(flag)
            .arg(&file)
            .status()
    };
    assert!(
        set("+i").await.unwrap().success(),
        "chattr +i (needs root and ext4)"
    );

    let output = process::run(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    )
    .await;
    set("-i").await.unwrap();

    assert_refused_naming_the_data_dir(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!stderr.contains("not a valid database"), "{stderr}");
}

/// A service stopped (SIGTERM) at once after its data file was deleted, before it looked
/// again: it writes the counts it holds back at the path as it stops, so that a restart
/// counts on instead of from 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_stopped_at_once_after_its_data_file_was_deleted_writes_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--data-dir", data];
    let deadlines = limits::deadlines(&args);
    let mut service = ServiceProcess::start(&args).await;
    for _ in 0..20 {
        service.client.visit().await;
    }

    tokio::fs::remove_file(dir.path().join(DATA_FILE))
        .await
        .unwrap();
    service.signal(Signal::SIGTERM);
    let status = service
        .wait(allowed(deadlines.exit() + PROCESS_START))
        .await;

    assert_eq!(status.code(), Some(0), "{}", service.log());
    assert_eq!(total_after_restart(data).await, 20, "counting goes on");
}

/// A service stopped (SIGTERM) while an older copy of its data file is in the way (it
/// refuses to count from it, and looks again every second): it exits in time, leaves the
/// older copy alone, and saves the counts it holds beside it, saying where. A start is
/// refused while that file is there (it would count from the older copy and answer
/// numbers again), saying what to do; put in place, the saved file counts on; moved out
/// of the folder, the older copy is counted from, as the operator chose.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_stopped_while_an_older_copy_is_in_the_way_exits_and_saves_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--data-dir", data];
    let deadlines = limits::deadlines(&args);
    let mut service = ServiceProcess::start(&args).await;
    let file = dir.path().join(DATA_FILE);
    let older = dir.path().join("older.redb");
    for _ in 0..10 {
        service.client.visit().await;
    }
    tokio::fs::copy(&file, &older).await.unwrap();
    for _ in 0..10 {
        service.client.visit().await;
    }
    tokio::fs::rename(&older, &file).await.unwrap();
    // The writer found it, and looks again every second.
    wait_until(
        "the writer to refuse the older copy",
        allowed(FILE_CHECK + REOPEN_DELAY),
        || async {
            service
                .log()
                .contains("holds less than this service has counted")
        },
    )
    .await;

    service.signal(Signal::SIGTERM);
    let status = service
        .wait(allowed(deadlines.exit() + PROCESS_START))
        .await;

    assert_eq!(status.code(), Some(0), "{}", service.log());
    let log = service.log();
    let saved = log
        .split("\"saved\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the log says where the counts are: {log}"));
    let refused = process::run(&["--listen", "127.0.0.1:0", "--data-dir", data], &[]).await;
    assert_refused_naming_the_data_dir(&refused);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(saved)
            && stderr.contains("hits total: 20 > 10")
            && stderr.contains("Put it in place"),
        "{stderr}"
    );

    let aside = tempfile::tempdir().unwrap();
    let kept = aside.path().join("saved.redb");
    tokio::fs::rename(saved, &kept).await.unwrap();
    assert_eq!(
        total_after_restart(data).await,
        10,
        "moved out of the folder, the older copy is counted from"
    );
    tokio::fs::rename(&kept, &file).await.unwrap();
    assert_eq!(
        total_after_restart(data).await,
        20,
        "the saved file counts on"
    );
}

/// A file named as the counts a service saves beside the data file that cannot be read
/// (a copy cut short, garbage, a folder) refuses a start as one holding more does: it may
/// hold counts the data file lacks. Moved out of the folder, the start counts on.
#[tokio::test(flavor = "multi_thread")]
async fn a_saved_file_that_cannot_be_read_refuses_a_start_until_it_is_moved_away() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    data_with_visits(dir.path(), 3).await;
    let saved = dir.path().join(format!("{DATA_FILE}.saved-1796300000"));
    let aside = tempfile::tempdir().unwrap();
    for unreadable in ["garbage", "empty", "folder"] {
        match unreadable {
            "garbage" => std::fs::write(&saved, b"not a database").unwrap(),
            "empty" => std::fs::write(&saved, b"").unwrap(),
            _ => std::fs::create_dir(&saved).unwrap(),
        }

        let refused = process::run(&["--listen", "127.0.0.1:0", "--data-dir", data], &[]).await;

        assert_refused_naming_the_data_dir(&refused);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("cannot be read") && stderr.contains(saved.to_str().unwrap()),
            "{unreadable}: {stderr}"
        );
        std::fs::rename(&saved, aside.path().join(unreadable)).unwrap();
    }
    assert_eq!(
        total_after_restart(data).await,
        3,
        "moved away, counting goes on"
    );
}

/// A disk that stalls (frozen) under a commit: readiness answers, not ready, and the
/// visits waiting on it are answered within the request timeout, 503, and the one whose
/// commit was under way as in doubt, rather than held until the disk comes back (after
/// which the service answered 200, past every client's and edge's timeout). Once the
/// disk is back, what those visits counted is no more than what was reported in doubt.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_stalls_under_a_commit_answers_its_visits_in_time_in_doubt() {
    const VISITS: usize = 4;
    let disk = FreezableDisk::mount();
    let data = disk.path.join("data");
    let args = ["--data-dir", data.to_str().unwrap()];
    let deadlines = limits::deadlines(&args);
    let service = ServiceProcess::start(&args).await;
    let before = service.client.visit().await;

    let frozen = disk.freeze();
    let visits = (0..VISITS).map(|_| {
        let client = service.client.clone();
        async move { client.try_visit().await }
    });
    let answers = tokio::time::timeout(
        allowed(deadlines.request),
        futures_util::future::join_all(visits),
    );
    // Meanwhile readiness answers, and says not ready once the commit has taken longer
    // than the store timeout: it does not wait for the disk either.
    let readiness = tokio::time::timeout(allowed(deadlines.store * 4), async {
        while service.client.ready_status().await != StatusCode::SERVICE_UNAVAILABLE {}
    });
    let (answers, readiness) = tokio::join!(answers, readiness);
    drop(frozen);

    readiness.expect("readiness answered, not ready, while the disk stalled");
    let answers = answers.expect("every visit answered within the request timeout");
    let mut said_in_doubt = 0;
    for answer in &answers {
        assert_eq!(
            answer.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{answer:?}"
        );
        said_in_doubt += usize::from(answer.body.contains("may have been counted"));
    }
    assert!(
        said_in_doubt >= 1,
        "the visit whose commit stalled: {answers:?}"
    );
    service
        .client
        .wait_ready(allowed(deadlines.store + REOPEN_DELAY))
        .await;
    let counted = service.client.visit().await - 1 - before;
    assert!(
        counted as u64 <= in_doubt(&service).await,
        "{counted} counted while frozen, more than reported in doubt"
    );
}

/// What an operator may do to the data file in place while the service runs.
#[derive(Debug, Clone, Copy)]
enum InPlace {
    /// A backup copied onto it (`cp backup.redb stackdemo.redb`: the same file, rewritten).
    BackupCopiedOnto,
    /// `truncate -s 0`.
    Truncated,
    /// Pages in its middle overwritten (`dd conv=notrunc`).
    Overwritten,
    /// Truncated by its path, never opened (`truncate(2)`, as `os.truncate` does).
    TruncatedByPath,
    /// Overwritten by a writer that keeps it open.
    WrittenKeptOpen,
}

/// The data file written in place by another process while the service runs: the service
/// stops counting at once and for good (not ready, saying why), since neither the file
/// nor what its open database remembers of it can be trusted any more; it exits cleanly
/// on SIGTERM without writing to it, and the next start takes the file as it is (a
/// backup: counting from it; an empty file: refused). Before, it went on answering 200 into a file that the next
/// start refused as damaged, with every count in it.
async fn a_data_file_written_in_place(change: InPlace) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--data-dir", data];
    let deadlines = limits::deadlines(&args);
    let mut service = ServiceProcess::start(&args).await;
    let file = dir.path().join(DATA_FILE);
    let backup = dir.path().join("backup.redb");
    for _ in 0..10 {
        service.client.visit().await;
    }
    tokio::fs::copy(&file, &backup).await.unwrap();
    for _ in 0..10 {
        service.client.visit().await;
    }

    let len = tokio::fs::metadata(&file).await.unwrap().len();
    let kept_open = tokio::task::spawn_blocking({
        let file = file.clone();
        move || -> Option<std::fs::File> {
            use std::{io::Write, os::unix::fs::FileExt};
            match change {
                InPlace::BackupCopiedOnto => {
                    std::fs::copy(&backup, &file).unwrap();
                }
                InPlace::Truncated => {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&file)
                        .unwrap()
                        .set_len(0)
                        .unwrap();
                }
                InPlace::Overwritten => {
                    let opened = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                    opened.write_all_at(&vec![0xa5; 8192], len / 2).unwrap();
                    (&opened).flush().unwrap();
                }
                InPlace::TruncatedByPath => {
                    nix::unistd::truncate(&file, 0).unwrap();
                }
                InPlace::WrittenKeptOpen => {
                    let opened = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                    opened.write_all_at(&vec![0xa5; 8192], len / 2).unwrap();
                    return Some(opened);
                }
            }
            None
        }
    })
    .await
    .unwrap();

    let client = &service.client;
    wait_until("not ready, saying why", allowed(FILE_CHECK), || async {
        client.readiness().await.contains("missing or replaced")
    })
    .await;
    // Past the writer's next looks: still refused.
    let refused_until = std::time::Instant::now() + REOPEN_DELAY * 2;
    while std::time::Instant::now() < refused_until {
        let answer = client.try_visit().await;
        assert_eq!(
            answer.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{change:?}"
        );
    }
    assert!(
        service.log().contains("was written by another process"),
        "the log says why: {}",
        service.log()
    );
    drop(kept_open);
    service.signal(Signal::SIGTERM);
    let status = service
        .wait(allowed(deadlines.exit() + PROCESS_START))
        .await;
    assert_eq!(status.code(), Some(0), "{}", service.log());

    match change {
        InPlace::BackupCopiedOnto => {
            assert_eq!(total_after_restart(data).await, 10, "the backup counts on");
        }
        InPlace::Truncated | InPlace::TruncatedByPath => {
            let output = process::run(&["--listen", "127.0.0.1:0", "--data-dir", data], &[]).await;
            assert_refused_naming_the_data_dir(&output);
        }
        // Damage in the middle of the file: refused at start or served correctly, as
        // `a_damaged_data_file_is_refused_at_start_or_served_correctly…` shows.
        InPlace::Overwritten | InPlace::WrittenKeptOpen => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_copied_onto_the_data_file_while_serving_stops_counting_until_restarted() {
    a_data_file_written_in_place(InPlace::BackupCopiedOnto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_truncated_while_serving_stops_counting() {
    a_data_file_written_in_place(InPlace::Truncated).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_overwritten_in_place_while_serving_stops_counting() {
    a_data_file_written_in_place(InPlace::Overwritten).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_truncated_by_its_path_while_serving_stops_counting() {
    a_data_file_written_in_place(InPlace::TruncatedByPath).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_overwritten_by_a_writer_that_keeps_it_open_stops_counting() {
    a_data_file_written_in_place(InPlace::WrittenKeptOpen).await;
}

/// Once the data file has been written in place, whatever appears at the path since (a
/// valid database with more counts renamed into place) is neither taken nor written: the
/// service stays refusing, and leaves both files as they are, until it is restarted.
#[tokio::test(flavor = "multi_thread")]
async fn after_the_data_file_was_written_in_place_nothing_at_the_path_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let other = dir.path().join("other");
    data_with_visits(&other, 50).await;
    let args = ["--data-dir", data.to_str().unwrap()];
    let service = ServiceProcess::start(&args).await;
    for _ in 0..3 {
        service.client.visit().await;
    }
    let file = data.join(DATA_FILE);
    let written = tokio::fs::read(&file).await.unwrap();
    // Written in place with what it holds: the same bytes, another writer.
    tokio::fs::write(&file, &written).await.unwrap();
    let client = &service.client;
    wait_until("not ready", allowed(FILE_CHECK), || async {
        client.readiness().await.contains("missing or replaced")
    })
    .await;
    let replacement = data.join("replacement.redb");
    tokio::fs::copy(other.join(DATA_FILE), &replacement)
        .await
        .unwrap();
    let replaced_with = tokio::fs::read(&replacement).await.unwrap();
    let old = dir.path().join("old.redb");
    tokio::fs::hard_link(&file, &old).await.unwrap();
    tokio::fs::rename(&replacement, &file).await.unwrap();

    // Past the writer's next looks: still refused, neither file written.
    let refused_until = std::time::Instant::now() + (FILE_CHECK + REOPEN_DELAY) * 2;
    while std::time::Instant::now() < refused_until {
        let answer = client.try_visit().await;
        assert_eq!(answer.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    }
    assert!(
        tokio::fs::read(&old).await.unwrap() == written,
        "the old file was written"
    );
    assert!(
        tokio::fs::read(&file).await.unwrap() == replaced_with,
        "the new file was written"
    );
}

/// A data file made immutable (`chattr +i`, on a file system that has it) while a visit
/// is written, and made writable again: the service counts on by itself. It closed and
/// opened the file again meanwhile, which is not another process writing to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_file_made_immutable_for_a_while_is_written_again_once_it_is_not() {
    let disk = FreezableDisk::mount();
    let data = disk.path.join("data");
    let args = ["--data-dir", data.to_str().unwrap()];
    let deadlines = limits::deadlines(&args);
    let service = ServiceProcess::start(&args).await;
    let before = service.client.visit().await;
    let file = data.join(DATA_FILE);
    let chattr = |flag: &'static str| {
        let file = file.clone();
        async move {
            let status = tokio::process::Command::new("chattr")
                .arg(flag)
                .arg(&file)
                .status()
                .await
                .expect("chattr (e2fsprogs) runs");
            assert!(status.success(), "chattr {flag}");
        }
    };

    chattr("+i").await;
    let refused = service.client.try_visit().await;
    assert_eq!(
        refused.status,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "{refused:?}"
    );
    // The writer has tried again at least once.
    wait_until(
        "the writer to try again",
        allowed(REOPEN_DELAY * 2),
        || async { service.log().contains("cannot write yet") },
    )
    .await;
    chattr("-i").await;

    service
        .client
        .wait_ready(allowed(REOPEN_DELAY * 2 + deadlines.store))
        .await;
    assert_eq!(service.client.visit().await, before + 1, "counting goes on");
}
