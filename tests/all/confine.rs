//! The second wall (`--confine`, on by default for `run` and `serve`): code
//! that escapes the wasm sandbox — here on purpose, an artifact of
//! `wasm-run compile` whose machine code was replaced, run with the
//! explicit trust flag — is refused by the kernel: no shell, no file
//! outside what the process was given, no kind of socket the host never
//! uses. The same artifacts run with `--confine off` do reach the system,
//! so each test fails without the confinement.
//!
//! The payloads exit the process with the system call's error number
//! (`ENOSYS`, 38, from the system-call filter; `EACCES`, 13, from the file
//! rules), or 0 / 100 when the call succeeded.

#![cfg(target_arch = "x86_64")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::compile::patched_artifact_with;
use crate::serve::ServeGuard;
use crate::wasm_run_command;

const ENOSYS: i32 = 38;
const EACCES: i32 = 13;

/// The tail shared by the payloads: `mov edi, eax; neg edi; mov eax, 231
/// (exit_group); syscall` — exit with the failed call's error number.
const EXIT_WITH_ERRNO: [u8; 11] = [0x89, 0xc7, 0xf7, 0xdf, 0xb8, 0xe7, 0, 0, 0, 0x0f, 0x05];

/// `execve("/bin/sh", NULL, NULL)`, then exit with its error number.
fn exec_shell() -> PathBuf {
    #[rustfmt::skip]
    let exec: &[u8] = &[
        0x48, 0xb8, b'/', b'b', b'i', b'n', b'/', b's', b'h', 0, // movabs rax, "/bin/sh\0"
        0x50,                                                   // push rax
        0x48, 0x89, 0xe7,                                       // mov rdi, rsp
        0x31, 0xf6,                                             // xor esi, esi
        0x31, 0xd2,                                             // xor edx, edx
        0xb8, 59, 0, 0, 0,                                      // mov eax, 59 (execve)
        0x0f, 0x05,                                             // syscall
    ];
    patched_artifact_with("exec-shell.cwasm", &[exec, &EXIT_WITH_ERRNO].concat())
}

/// `openat(AT_FDCWD, "/etc/passwd", O_RDONLY)`, `read` 4 KiB of it and
/// `write` them to stdout, exit 0; or exit with the open's error number.
fn read_passwd() -> PathBuf {
    #[rustfmt::skip]
    let open_read_write: &[u8] = &[
        0x48, 0xc7, 0xc0, b's', b'w', b'd', 0,                  // mov rax, "swd\0"
        0x50,                                                   // push rax
        0x48, 0xb8, b'/', b'e', b't', b'c', b'/', b'p', b'a', b's', // movabs rax, "/etc/pas"
        0x50,                                                   // push rax
        0x48, 0x89, 0xe6,                                       // mov rsi, rsp
        0xbf, 0x9c, 0xff, 0xff, 0xff,                           // mov edi, -100 (AT_FDCWD)
        0x31, 0xd2,                                             // xor edx, edx (O_RDONLY)
        0xb8, 0x01, 0x01, 0, 0,                                 // mov eax, 257 (openat)
        0x0f, 0x05,                                             // syscall
        0x48, 0x85, 0xc0,                                       // test rax, rax
        0x78, 0x2f,                                             // js exit_with_errno
        0x89, 0xc7,                                             // mov edi, eax
        0x48, 0x81, 0xec, 0x00, 0x10, 0, 0,                     // sub rsp, 4096
        0x48, 0x89, 0xe6,                                       // mov rsi, rsp
        0xba, 0x00, 0x10, 0, 0,                                 // mov edx, 4096
        0x31, 0xc0,                                             // xor eax, eax (read)
        0x0f, 0x05,                                             // syscall
        0x89, 0xc2,                                             // mov edx, eax
        0xbf, 1, 0, 0, 0,                                       // mov edi, 1
        0x48, 0x89, 0xe6,                                       // mov rsi, rsp
        0xb8, 1, 0, 0, 0,                                       // mov eax, 1 (write)
        0x0f, 0x05,                                             // syscall
        0x31, 0xff,                                             // xor edi, edi
        0xb8, 0xe7, 0, 0, 0,                                    // mov eax, 231 (exit_group)
        0x0f, 0x05,                                             // syscall
    ];
    patched_artifact_with(
        "read-passwd.cwasm",
        &[open_read_write, &EXIT_WITH_ERRNO].concat(),
    )
}

/// `socket(AF_PACKET, SOCK_RAW, 0)`: exit 100 if the kernel gave one, else
/// its error number. (Nothing is sent: the socket is never used.)
fn packet_socket() -> PathBuf {
    #[rustfmt::skip]
    let socket: &[u8] = &[
        0xbf, 17, 0, 0, 0,                                      // mov edi, 17 (AF_PACKET)
        0xbe, 3, 0, 0, 0,                                       // mov esi, 3 (SOCK_RAW)
        0x31, 0xd2,                                             // xor edx, edx
        0xb8, 41, 0, 0, 0,                                      // mov eax, 41 (socket)
        0x0f, 0x05,                                             // syscall
        0x48, 0x85, 0xc0,                                       // test rax, rax
        0x78, 0x0c,                                             // js exit_with_errno
        0xbf, 100, 0, 0, 0,                                     // mov edi, 100
        0xb8, 0xe7, 0, 0, 0,                                    // mov eax, 231 (exit_group)
        0x0f, 0x05,                                             // syscall
    ];
    patched_artifact_with("packet-socket.cwasm", &[socket, &EXIT_WITH_ERRNO].concat())
}

/// `wasm-run run --allow-precompiled --confine MODE ARTIFACT`, with `stdin`.
fn run(artifact: &Path, mode: &str, stdin: &[u8]) -> Output {
    let artifact = artifact.to_str().unwrap();
    let mut child = wasm_run_command(&["run", "--allow-precompiled", "--confine", mode, artifact])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn escaped_code_cannot_start_a_shell() {
    let evil = exec_shell();
    let script = b"echo ESCAPED\n";
    let open = run(&evil, "off", script);
    assert!(
        String::from_utf8_lossy(&open.stdout).contains("ESCAPED"),
        "unconfined, the patched code starts a shell: {open:?}"
    );
    let confined = run(&evil, "on", script);
    assert_eq!(confined.status.code(), Some(ENOSYS), "{confined:?}");
    assert!(!String::from_utf8_lossy(&confined.stdout).contains("ESCAPED"));
    // The default is on.
    let evil = evil.to_str().unwrap();
    let default = wasm_run_command(&["run", "--allow-precompiled", evil])
        .env_remove("WASM_RUN_CONFINE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(default.status.code(), Some(ENOSYS), "{default:?}");
}

#[test]
fn escaped_code_cannot_read_files_it_was_not_given() {
    let evil = read_passwd();
    let open = run(&evil, "off", b"");
    assert_eq!(open.status.code(), Some(0), "{open:?}");
    assert!(
        String::from_utf8_lossy(&open.stdout).contains("root:"),
        "unconfined, the patched code reads /etc/passwd: {open:?}"
    );
    let confined = run(&evil, "on", b"");
    assert_eq!(confined.status.code(), Some(EACCES), "{confined:?}");
    assert!(!String::from_utf8_lossy(&confined.stdout).contains("root:"));
}

#[test]
fn escaped_code_cannot_open_a_kind_of_socket_the_host_never_uses() {
    let evil = packet_socket();
    let open = run(&evil, "off", b"");
    // 100: a packet socket; 1 (EPERM) where the test runs without the
    // capability: either way the kernel was asked.
    assert!(
        matches!(open.status.code(), Some(100 | 1)),
        "unconfined, the kernel answers the call itself: {open:?}"
    );
    let confined = run(&evil, "on", b"");
    assert_eq!(confined.status.code(), Some(ENOSYS), "{confined:?}");
}

/// The server confines itself too: a route serving the patched artifact
/// (trusted explicitly) takes the server down, but the file it reached
/// for stays closed.
#[test]
fn the_server_is_confined_once_started() {
    let evil = read_passwd();
    for (mode, status) in [("off", 0), ("on", EACCES)] {
        let server = ServeGuard::serving(&evil, &["--allow-precompiled", "--confine", mode]);
        // No reply comes: the payload ends the process.
        let mut request = std::net::TcpStream::connect(server.addr).unwrap();
        request
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let (code, stderr) = server.wait(Duration::from_secs(30));
        assert_eq!(code, Some(status), "--confine {mode}: {stderr}");
    }
}

/// The kernel's view of a running server (`/proc/PID/status`).
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn a_server_runs_under_its_filter_with_no_new_privileges() {
    let server = ServeGuard::start(&[]);
    crate::serve::assert_answers(server.addr, "/hello", "Hello from wasm-run!\n").await;
    assert_eq!(status_field(server.pid(), "NoNewPrivs"), "1");
    assert_eq!(status_field(server.pid(), "Seccomp"), "2", "filter mode");
    let off = ServeGuard::start(&["--confine", "off"]);
    assert_eq!(status_field(off.pid(), "NoNewPrivs"), "1", "in every mode");
    assert_eq!(status_field(off.pid(), "Seccomp"), "0");
}

/// Started as root, `--user` drops to that user (and group, without
/// supplementary groups) once the listeners are bound.
#[tokio::test]
async fn a_server_started_as_root_runs_as_the_user_it_is_given() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the test runs as a user who cannot change users");
        return;
    }
    let server = ServeGuard::start(&["--user", "nobody"]);
    crate::serve::assert_answers(server.addr, "/hello", "Hello from wasm-run!\n").await;
    for field in ["Uid", "Gid"] {
        let ids = status_field(server.pid(), field);
        assert!(
            ids.split_whitespace().all(|id| id == "65534"),
            "{field}: {ids}"
        );
    }
    assert_eq!(status_field(server.pid(), "Groups"), "65534");

    let o = wasm_run_command(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--user",
        "no-such-user-here",
    ])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("no `no-such-user-here` in /etc/passwd"),
        "{stderr}"
    );
}

/// A reload reads guests only beneath the directories readable at start:
/// one from elsewhere fails with a line that says why, and the old routes
/// keep serving.
#[tokio::test]
async fn a_reload_from_a_directory_unreadable_at_start_fails_and_says_why() {
    use crate::serve::{counter, eventually, get};
    let scratch = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (home, elsewhere) = (
        scratch.join("confine-home"),
        scratch.join("confine-elsewhere"),
    );
    for dir in [&home, &elsewhere] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(
            wasm_run_tests::guest("demo", wasm_run_tests::Target::P1),
            dir.join("demo.wasm"),
        )
        .unwrap();
    }
    let config = home.join("wasm-run.toml");
    std::fs::write(&config, "[[route]]\npath = \"/\"\nmodule = \"demo.wasm\"\n").unwrap();
    let server = ServeGuard::with_config(&config, &["--admin-addr", "127.0.0.1:0"]);
    let (addr, admin) = (server.addr, server.admin());
    assert_eq!(get(addr, "/hello").await.text(), "Hello from wasm-run!\n");

    let outside = elsewhere.join("demo.wasm");
    std::fs::write(
        &config,
        format!(
            "[[route]]\npath = \"/\"\nmodule = \"{}\"\n",
            outside.display()
        ),
    )
    .unwrap();
    server.signal("HUP");
    let failed = r#"wasm_run_reloads_total{result="failed"}"#;
    eventually(Duration::from_secs(10), "the failed reload", || async {
        counter(admin, failed).await == 1
    })
    .await;
    assert_eq!(get(addr, "/hello").await.text(), "Hello from wasm-run!\n");
    let (_, stderr) = server.terminate(Duration::from_secs(30)).await;
    assert!(
        stderr.contains("a reload reads guests only beneath the directories readable at start"),
        "{stderr}"
    );
}
