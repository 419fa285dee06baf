//! The page in a real headless Chromium: the scripts run, the DOM shows the count, who
//! served it and the replicas at work, and a screenshot is taken.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use tokio::process::Command;

use crate::helpers::{Backend, RedisServer, TestApp, allowed, require_program};

/// How long Chromium may take to load, run and dump a page: it starts in about a second
/// and runs the page's scripts for up to its virtual time budget (3 s).
const CHROMIUM_RUN: Duration = Duration::from_secs(5);

/// Runs headless Chromium on `url` with the given extra flags (flags from
/// shared/ENVIRONMENT.md: without the background-networking ones it stalls here).
async fn headless(url: &str, extra: &[&str]) -> Output {
    let chromium: PathBuf = require_program("chromium", "CHROMIUM", "chromium").await;
    let profile = tempfile::tempdir().unwrap();
    let run = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(allowed(CHROMIUM_RUN), run)
        .await
        .expect("chromium ends within its bound")
        .expect("chromium runs")
}

fn screenshot_path() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    dir.join("page.png")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_the_count_the_replica_and_the_live_view() {
    let redis = RedisServer::start().await;
    let web1 = TestApp::spawn_on_redis(&redis.url(), &["--replica", "web.1<script>"]).await;
    // Names that are also names of every JavaScript object's own properties.
    let web2 = TestApp::spawn_on_redis(&redis.url(), &["--replica", "__proto__"]).await;
    let mut web3 = TestApp::spawn_on_redis(&redis.url(), &["--replica", "constructor"]).await;
    for _ in 0..3 {
        web1.client.visit().await;
    }
    web2.client.visit().await;
    web3.client.visit().await;
    let named = web1.client.get("/c/docs/intro").await;
    assert_eq!(named.status(), 200);
    // A total past what a double holds exactly, and one that is not a number at all.
    for (name, total) in [("big", "9007199254740993"), ("broken", "abc")] {
        assert_eq!(web1.client.get(&format!("/c/{name}")).await.status(), 200);
        redis
            .query(&["HSET", &format!("hits:c:{name}"), "total", total])
            .await
            .unwrap();
    }
    // A replica that stopped stays in the totals but is shown as gone.
    web3.stop().await;
    let url = format!("{}/", web1.client.base);

    let dumped = headless(&url, &["--dump-dom"]).await;

    let dom = String::from_utf8_lossy(&dumped.stdout);
    let log = String::from_utf8_lossy(&dumped.stderr);
    assert!(dumped.status.success(), "chromium failed: {log}");
    assert!(
        dom.contains(r#"id="count">6</strong>"#),
        "the page counted visit 6:\n{dom}"
    );
    assert!(
        dom.contains(r#"id="served-by">web.1&lt;script&gt;</code>"#),
        "served-by, escaped:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-live="ok""#),
        "the live view loaded /api/stats:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-replica="__proto__""#),
        "the other replica is listed:\n{dom}"
    );
    assert!(
        dom.contains("6 visits in all; 2 of 3 replicas alive now."),
        "summary:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-replica="constructor""#)
            && dom.contains("1 visit (17%), v0.1.0, gone"),
        "the stopped replica is listed as gone:\n{dom}"
    );
    assert!(
        dom.contains(r#"href="/c/docs/intro?count=0""#) && dom.contains(r#"data-counters="ok""#),
        "the page links each counter's page:\n{dom}"
    );
    assert!(
        dom.contains("9007199254740993 visits"),
        "a total past 2^53, exact:\n{dom}"
    );
    assert!(
        dom.contains("total unreadable: ") && !dom.contains("null visits"),
        "a total that is not a number, said so:\n{dom}"
    );
    assert!(!log.contains("Uncaught"), "JavaScript errors:\n{log}");
    assert_eq!(
        web2.client.visit().await,
        7,
        "the live view's polling counted no visit"
    );

    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    let taken = headless(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,800",
        ],
    )
    .await;
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let png = std::fs::read(screenshot_path()).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
}

/// Every badge style, loaded by Chromium from the service: each is a valid image as wide
/// as it says, and each text, measured by Chromium in the badge's own font with the
/// width the badge gives it taken away, is within a pixel of that width: not clipped,
/// not padded. A screenshot of them all is kept (target/tmp/badges.png) to be looked at.
#[tokio::test(flavor = "multi_thread")]
async fn badges_render_in_chromium_as_wide_as_their_text() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--rate-limit", "off"]).await;
    let base = &app.client.base;
    let queries = [
        "",
        "style=flat-square&color=blue&label=page%20views",
        "style=plastic&labelColor=orange&show=unique",
        "style=for-the-badge&label=hits&abbreviated=true",
        "style=flat&label=WWWWWWWWWW%20mmmm&color=red",
    ];
    for _ in 0..1234 {
        let _ = app.client.get("/badge/owner/repo.svg").await;
    }
    let images: String = queries
        .iter()
        .map(|q| format!(r#"<p><img src="{base}/badge/owner/repo.svg?count=0&{q}"></p>"#))
        .collect();
    // Loads each badge as an image and, as SVG inline, measures its texts without the
    // width the badge gives them.
    let page = format!(
        r#"<!doctype html><html><body style="margin:8px">{images}<pre id="out"></pre><script>
        (async function () {{
          const out = [];
          const imgs = [...document.images];
          await Promise.all(imgs.map(i => i.decode().catch(() => null)));
          for (const img of imgs) {{
            const svg = await (await fetch(img.src)).text();
            const box = document.createElement("div");
            box.innerHTML = svg;
            document.body.appendChild(box);
            const root = box.querySelector("svg");
            const texts = [...root.querySelectorAll("text:not([aria-hidden])")].map(t => {{
              const given = Number(t.getAttribute("textLength"));
              t.removeAttribute("textLength");
              return [given, t.getComputedTextLength()];
            }});
            out.push(JSON.stringify({{
              loaded: img.complete && img.naturalWidth > 0,
              natural: [img.naturalWidth, img.naturalHeight],
              declared: [Number(root.getAttribute("width")), Number(root.getAttribute("height"))],
              texts: texts,
            }}));
          }}
          document.getElementById("out").textContent = out.join("\n");
          document.title = "measured";
        }})();
        </script></body></html>"#
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("badges.html");
    std::fs::write(&file, page).unwrap();
    let url = format!("file://{}", file.display());

    let dumped = headless(&url, &["--dump-dom", "--allow-file-access-from-files"]).await;

    let dom = String::from_utf8_lossy(&dumped.stdout);
    let log = String::from_utf8_lossy(&dumped.stderr);
    assert!(dumped.status.success(), "chromium failed: {log}");
    let out = dom
        .split(r#"<pre id="out">"#)
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_default();
    let measured: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert_eq!(
        measured.len(),
        queries.len(),
        "every badge measured:\n{dom}\n{log}"
    );
    for (query, badge) in queries.iter().zip(&measured) {
        assert_eq!(badge["loaded"], true, "{query}: the image loads: {badge}");
        assert_eq!(
            badge["natural"], badge["declared"],
            "{query}: its size: {badge}"
        );
        for text in badge["texts"].as_array().unwrap() {
            // Both in tenths of a pixel (the texts are scaled by 0.1).
            let given = text[0].as_f64().unwrap();
            let rendered = text[1].as_f64().unwrap();
            assert!(
                (given - rendered).abs() <= 10.0,
                "{query}: a text Chromium draws {rendered} wide is given {given}: {badge}"
            );
        }
    }

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("badges.png");
    let _ = std::fs::remove_file(&shot);
    let taken = headless(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=400,260",
        ],
    )
    .await;
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
}
