//! What a request makes the host write: log lines it causes are bounded per
//! request, and no value a guest or client chose can end a line or forge a
//! field; text from a module is cut in messages, bodies and reports.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasm_run_tests::http_guest;

use crate::cli::run_report;
use crate::serve::{ServeGuard, get};
use crate::wat_file;

/// Characters that end a line for some log tools.
fn breaks_a_line(c: char) -> bool {
    c == '\u{85}' || c == '\u{2028}' || c == '\u{2029}' || (c.is_control() && c != '\n')
}

#[tokio::test]
async fn refused_outgoing_requests_log_a_bounded_number_of_lines() {
    let server = ServeGuard::serving(&http_guest(), &["--timeout", "10s"]);
    let long = "a".repeat(2000);
    // 1,000 denied requests with 2 KB paths, from one request.
    let reply = get(
        server.addr,
        &format!("/outgoing-flood?n=1000&url=http://example.com/{long}"),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let (_, stderr) = server.terminate(Duration::from_secs(10)).await;
    let denied = stderr.matches("outgoing HTTP request denied").count();
    assert!(
        denied <= wasm_run::http_client::MAX_REFUSED_LOG_LINES,
        "{denied} lines"
    );
    assert!(denied > 0, "the first ones are logged");
    assert_eq!(
        stderr.matches("are not logged").count(),
        1,
        "one capped line"
    );
    assert!(stderr.len() < 64 << 10, "{} bytes of log", stderr.len());
}

#[tokio::test]
async fn a_client_chosen_path_cannot_start_a_log_line() {
    let server = ServeGuard::serving(&http_guest(), &[]);
    for path in [
        "/hello\u{2028}level=ERROR,forged=1",
        "/hello\u{85}forged=2",
        "/hello\u{2029}forged=3",
    ] {
        let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply).await;
    }
    let (_, stderr) = server.terminate(Duration::from_secs(10)).await;
    let bad: Vec<&str> = stderr
        .lines()
        .filter(|l| l.chars().any(breaks_a_line))
        .collect();
    assert!(bad.is_empty(), "lines with line breaks inside: {bad:?}");
    assert_eq!(
        stderr.matches("forged=").count(),
        3,
        "every request logged: {stderr}"
    );
    for line in stderr.lines() {
        assert!(!line.trim_start().starts_with("forged"), "{line}");
        assert!(!line.starts_with("level=ERROR"), "{line}");
    }
}

#[test]
fn a_huge_function_name_is_cut_in_the_message_report_and_log() {
    let name = "n".repeat(1 << 20);
    let module = wat_file(
        "huge-name",
        &format!(r#"(module (func ${name} unreachable) (func (export "_start") (call ${name})))"#),
    );
    let (status, _, stderr, report) = run_report(&[], module.to_str().unwrap(), &[]);
    assert_eq!(status, 134, "{report}");
    assert_eq!(report["outcome"], "trapped");
    let message = report["message"].as_str().unwrap();
    assert!(message.len() <= 2048, "{} bytes of message", message.len());
    assert!(stderr.len() <= 8192, "{} bytes of stderr", stderr.len());
}
