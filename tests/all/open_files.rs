//! Files a guest opens through its preopened directories: at most
//! `MAX_OPEN_FILES` descriptors per invocation, measured as the host
//! process's open descriptors (`/proc/PID/fd`); and the host's file I/O for
//! a request (a directory listing) charged to its memory and CPU. Each test
//! fails without its bound.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use wasm_run::MAX_OPEN_FILES;
use wasm_run_tests::{Target, guest};

use crate::serve::fds_of;
use crate::wasm_run;

/// A directory holding one small file, `f`.
fn data_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), "x").unwrap();
    dir
}

/// `wasm-run run` of the open-files guest on `/d/f` of `mapping`.
fn open_files_run<'a>(
    mapping: &'a str,
    module: &'a Path,
    count: &'a str,
    secs: &'a str,
) -> [&'a str; 7] {
    let module = module.to_str().unwrap();
    ["run", "--dir", mapping, module, "/d/f", count, secs]
}

/// `K` of the guest's `opened K of N` line.
fn opened(line: &str) -> usize {
    line.strip_prefix("opened ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("not an `opened` line: {line:?}"))
}

#[test]
fn a_guest_opens_at_most_the_cap_of_files_then_gets_an_error() {
    let dir = data_dir("open-files-cap");
    let mapping = format!("{}::/d:ro", dir.display());
    for target in [Target::P1, Target::P2] {
        let module = guest("open-files", target);
        let open = |count: &str| {
            wasm_run(&[
                "run",
                "--dir",
                &mapping,
                module.to_str().unwrap(),
                "/d/f",
                count,
            ])
        };
        let out = open("1000");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The guest handles the error and exits cleanly: the cap hurts only
        // the open that passes it.
        assert_eq!(out.status.code(), Some(0), "{target:?}: {stderr}");
        let k = opened(stdout.trim());
        assert!(
            (MAX_OPEN_FILES - 8..MAX_OPEN_FILES).contains(&k),
            "{target:?}: opened {k} files, cap {MAX_OPEN_FILES}"
        );
        assert!(stderr.contains("open-files: /d/f:"), "{target:?}: {stderr}");
        // Under the cap, every open succeeds.
        let out = open("20");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "opened 20 of 20"
        );
    }
}

/// Descriptors a `wasm-run run` process holds while its guest, having
/// tried to open `count` files, sleeps.
fn fds_while_holding(dir: &Path, count: &str) -> usize {
    let mapping = format!("{}::/d:ro", dir.display());
    let module = guest("open-files", Target::P2);
    let mut child = crate::wasm_run_command(&open_files_run(&mapping, &module, count, "60"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("wasm-run starts");
    // The guest prints once it holds its files, then sleeps.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("opened "), "{line:?}");
    let fds = fds_of(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    fds
}

#[test]
fn the_host_holds_at_most_the_cap_of_descriptors_for_a_guest() {
    let dir = data_dir("open-files-fds");
    let base = fds_while_holding(&dir, "0");
    let held = fds_while_holding(&dir, "1000");
    assert!(
        held <= base + MAX_OPEN_FILES,
        "a guest made the host hold {held} descriptors ({base} without its files)"
    );
    // It did hold files: the cap is what stopped it, not a failure to open.
    assert!(held >= base + MAX_OPEN_FILES / 2, "{held} vs {base}");
}

/// `wasm-run serve`: a route whose requests open files takes descriptors
/// from the share the server keeps for guests, and admission counts them:
/// requests past that share wait their turn instead of taking the
/// descriptors the server needs to accept connections.
#[tokio::test]
async fn admission_counts_the_descriptors_requests_may_hold() {
    use crate::serve::{ServeGuard, flags, get, wait_for_metric};
    use std::time::Duration;

    let dir = data_dir("open-files-serve");
    let mapping = format!("{}::/d", dir.display());
    let http = wasm_run_tests::http_guest();
    // 556 descriptors: 256 for the host, 100 connections, 200 for guests,
    // three requests' worth (each may hold MAX_OPEN_FILES).
    let mut limits = flags("--max-connections 100 --queue-timeout 60s --admin-addr 127.0.0.1:0");
    limits.extend(["--dir", &mapping]);
    let server = ServeGuard::serving_with_ulimit("-n 556", &http, &limits);
    let admin = server.admin();
    let base = fds_of(server.pid());
    let addr = server.addr;
    let hostile: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "/open-files?n=1000&s=1").await }))
        .collect();
    // Some wait for descriptors (the memory budget is far from full).
    let queued = "wasm_run_admission_queue_length";
    wait_for_metric(admin, queued, |n| n >= 1, Duration::from_secs(30)).await;
    let mut peak = 0;
    let mut done = false;
    while !done {
        peak = peak.max(fds_of(server.pid()));
        done = hostile.iter().all(tokio::task::JoinHandle::is_finished);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The server's own descriptors, the guests' share, and the test's
    // connections (8 requests, the admin scrapes) with some slack.
    assert!(
        peak <= base + 200 + 16,
        "the server held {peak} descriptors ({base} idle)"
    );
    for request in hostile {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let k = opened(reply.text().trim());
        assert!(
            (MAX_OPEN_FILES - 8..MAX_OPEN_FILES).contains(&k),
            "opened {k}"
        );
    }
    assert_eq!(get(addr, "/hello").await.status, 200);
}

/// A directory listing is read whole by the host: it is charged to the
/// invocation that asked for it, so a huge directory kills the request
/// `memory_exceeded` instead of growing the host past the cap.
#[test]
fn a_directory_listing_counts_against_the_memory_cap() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("big-listing");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 20,000 entries with 200-byte names: ~5 MiB of listing in the host.
    for i in 0..20_000 {
        std::fs::write(dir.join(format!("{i:0>200}")), "").unwrap();
    }
    let mapping = format!("{}::/d:ro", dir.display());
    for target in [Target::P1, Target::P2] {
        let module = guest("list-dir", target);
        let module = module.to_str().unwrap();
        let (status, _, _, report) = crate::cli::run_report(
            &["--dir", &mapping, "--max-memory", "4MiB"],
            module,
            &["/d"],
        );
        assert_eq!(report["outcome"], "memory_exceeded", "{target:?}: {report}");
        assert_eq!(status, 137);
    }
    // Under a cap that fits it, the listing is read and shown as host
    // memory. (Preview 1 reads the whole listing again for every
    // `fd_readdir` call, which takes long in a debug build: WASI 0.2 only.)
    let module = guest("list-dir", Target::P2);
    let (status, stdout, _, report) = crate::cli::run_report(
        &["--dir", &mapping, "--max-memory", "64MiB"],
        module.to_str().unwrap(),
        &["/d"],
    );
    assert_eq!(status, 0, "{report}");
    assert_eq!(stdout.trim(), "20000 entries");
    assert!(
        report["host_memory_peak_bytes"].as_u64().unwrap() > 4 << 20,
        "the listing was not charged: {report}"
    );
    // And the CPU the host spends on it is the request's: preview 1's
    // re-reading of the listing for every call ends `cpu_exceeded`.
    let module = guest("list-dir", Target::P1);
    let (_, _, _, report) = crate::cli::run_report(
        &["--dir", &mapping, "--max-cpu", "1s", "--timeout", "300s"],
        module.to_str().unwrap(),
        &["/d"],
    );
    assert_eq!(report["outcome"], "cpu_exceeded", "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}
