//! The second wall: what the `wasm-run` process may still do if code ever
//! escapes wasmtime's sandbox (a bug in the engine, or an artifact run
//! with `--allow-precompiled` that is not what it claims).
//!
//! Two steps, both by the kernel, both on by default for `serve` and `run`
//! (`--confine off` for debugging, or a kernel without them):
//!
//! 1. [`files`], before the process starts any thread (Landlock applies to
//!    the thread that asks and the threads it starts later): the process
//!    may read only its guests, its configuration and a few system files
//!    it needs (`/proc/self`, `/etc/hosts`, `/etc/resolv.conf`, …), read
//!    and write only its compile cache and the directories given to
//!    guests, execute nothing, and signal no process outside itself.
//! 2. [`syscalls`], once started (listeners bound, guests loaded, threads
//!    running): a seccomp-bpf allow-list of the system calls the host
//!    makes, installed on every thread at once. Any other call fails with
//!    `ENOSYS`, as if the kernel did not have it: no `execve`, `ptrace`,
//!    `mount`, module loading, new namespaces or processes (`clone` only
//!    makes threads), sockets only of the Unix and IP families. The
//!    process is not killed: a call the list missed fails rather than
//!    ending every request in flight.
//!
//! `no_new_privs` is set in every mode. `--confine audit` installs the
//! same filter with the action "log and allow": the kernel logs each call
//! outside the list (`dmesg | grep type=1326`, `syscall=N`), which is how
//! the list is extended (SECURITY.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// How far the process confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Files by Landlock, system calls by a seccomp allow-list.
    #[default]
    On,
    /// Files as `on`; system calls outside the list are allowed but logged
    /// by the kernel (for extending the list).
    Audit,
    /// No confinement beyond `no_new_privs`.
    Off,
}

/// What the process may touch on the file system once confined.
#[derive(Debug, Default)]
pub struct Files {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
}

/// System files every wasm-run process reads while it runs: its own
/// `/proc` entries (memory and CPU figures), the machine's memory and
/// swap (the memory budget), cgroup limits, and what the resolver of
/// outgoing requests reads.
const SYSTEM_READS: &[&str] = &[
    "/proc/self",
    "/proc/meminfo",
    "/proc/swaps",
    "/proc/stat",
    "/sys/fs/cgroup",
    "/sys/devices/system/cpu",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
];

/// Files every wasm-run process may write: the null device.
const SYSTEM_WRITES: &[&str] = &["/dev/null"];

impl Files {
    /// Paths that are readable (files, or directories with all beneath).
    pub fn read(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.read.push(path.into());
        self
    }

    /// The directory a file is in, readable with all beneath it: a file
    /// replaced by a new one (editors and build tools rename over) is still
    /// readable on reload.
    /// A symbolic link's target's directory too.
    pub fn read_dir_of(&mut self, file: &Path) -> &mut Self {
        let dir_of = |file: &Path| match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.read(dir_of(file));
        if let Ok(target) = file.canonicalize() {
            self.read(dir_of(&target));
        }
        self
    }

    /// Paths that are readable and writable, with all beneath them.
    pub fn write(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.write.push(path.into());
        self
    }
}

/// Step 1: `no_new_privs`, then (unless `mode` is off) Landlock rules for
/// `files`. Call it before the process starts any thread. Logs what it
/// could not do; never fails the command (a kernel without Landlock gets an
/// info line).
pub fn files(mode: Mode, files: &Files) {
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        tracing::warn!(error = %e, "cannot set no_new_privs");
    }
    if mode == Mode::Off {
        return;
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        tracing::warn!(
            threads,
            "file confinement applies only to the thread that asks and those it starts"
        );
    }
    match landlock_rules(files) {
        Ok(RulesetStatus::FullyEnforced) => tracing::debug!("files confined (Landlock)"),
        Ok(RulesetStatus::PartiallyEnforced) => {
            tracing::info!("files confined by this kernel's Landlock, without its newest rights")
        }
        // Where the kernel lacks it, say so once where the operator looks
        // (`serve` logs at info), without adding a line to every `run`.
        Ok(RulesetStatus::NotEnforced) => tracing::info!(
            "this kernel has no Landlock: files are not confined (the system-call filter still applies)"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot confine files (Landlock)"),
    }
}

/// Runs the process as `spec` (`USER[:GROUP]`, names or numbers) from now
/// on: supplementary groups dropped, then real, effective and saved group
/// and user ids set. Call it before the process starts any thread (the
/// kernel changes the calling thread's ids; the threads it starts later
/// inherit them).
pub fn become_user(spec: &str) -> anyhow::Result<()> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    anyhow::ensure!(threads == 1, "{threads} threads already run (a bug)");
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let (uid, primary_gid) = lookup(user, "/etc/passwd", 2)?;
    let gid = match group {
        Some(group) => lookup(group, "/etc/group", 2)?.0,
        None => primary_gid.ok_or_else(|| {
            anyhow::anyhow!("uid {uid} is not in /etc/passwd: give its group too, as {uid}:GID")
        })?,
    };
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    set_thread_groups(&[gid]).map_err(|e| anyhow::anyhow!("cannot drop groups: {e}"))?;
    set_thread_res_gid(gid, gid, gid).map_err(|e| anyhow::anyhow!("cannot set the group: {e}"))?;
    set_thread_res_uid(uid, uid, uid).map_err(|e| anyhow::anyhow!("cannot set the user: {e}"))?;
    tracing::info!(uid = uid.as_raw(), gid = gid.as_raw(), "running as --user");
    Ok(())
}

/// `name` as a number, or the id in column 2 (and, for /etc/passwd, the
/// primary group in column 3) of its line in `file`.
fn lookup(name: &str, file: &str, id_column: usize) -> anyhow::Result<(u32, Option<u32>)> {
    if let Ok(id) = name.parse::<u32>() {
        let primary = std::fs::read_to_string(file).ok().and_then(|text| {
            text.lines()
                .map(|line| line.split(':').collect::<Vec<_>>())
                .find(|f| f.get(id_column).and_then(|v| v.parse::<u32>().ok()) == Some(id))
                .and_then(|f| f.get(id_column + 1)?.parse().ok())
        });
        return Ok((id, primary));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?;
    let fields = text
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .ok_or_else(|| anyhow::anyhow!("no `{name}` in {file}"))?;
    let id = fields
        .get(id_column)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("`{name}` has no numeric id in {file}"))?;
    Ok((id, fields.get(id_column + 1).and_then(|v| v.parse().ok())))
}

/// The newest Landlock ABI wasm-run asks for; older kernels give what they
/// have (best effort).
const LANDLOCK_ABI: ABI = ABI::V6;

fn landlock_rules(files: &Files) -> anyhow::Result<RulesetStatus> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read = AccessFs::from_read(LANDLOCK_ABI) & !AccessFs::Execute;
    let write = all & !AccessFs::Execute & !AccessFs::MakeChar & !AccessFs::MakeBlock;
    let mut rules: Vec<(PathBuf, landlock::BitFlags<AccessFs>)> = Vec::new();
    let reads = SYSTEM_READS
        .iter()
        .map(PathBuf::from)
        .chain(files.read.iter().cloned());
    rules.extend(reads.map(|p| (p, read)));
    let writes = SYSTEM_WRITES
        .iter()
        .map(PathBuf::from)
        .chain(files.write.iter().cloned());
    rules.extend(writes.map(|p| (p, write)));

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?;
    for (path, access) in rules {
        // A path that does not exist (yet), or that this user cannot
        // reach, grants nothing; nor does anything but a directory or a
        // file (a pipe or terminal given as a path is already open).
        let (Ok(meta), Ok(fd)) = (std::fs::metadata(&path), PathFd::new(&path)) else {
            continue;
        };
        let access = if meta.is_dir() {
            access
        } else if meta.is_file() || path == Path::new("/dev/null") {
            access & AccessFs::from_file(LANDLOCK_ABI)
        } else {
            continue;
        };
        // One rule the kernel refuses does not undo the others.
        if let Err(e) = (&mut ruleset).add_rule(PathBeneath::new(fd, access)) {
            tracing::debug!(path = %path.display(), error = %e, "no file rule");
        }
    }
    Ok(ruleset.restrict_self()?.ruleset)
}

/// Step 2: the system-call allow-list, on every thread of the process.
/// Logs what it could not do; never fails the command.
pub fn syscalls(mode: Mode) {
    if mode == Mode::Off {
        return;
    }
    let installed = filter(mode).and_then(|program| {
        seccompiler::apply_filter_all_threads(&program).map_err(anyhow::Error::from)
    });
    match installed {
        Ok(()) => tracing::debug!(?mode, "system calls confined (seccomp)"),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot confine system calls (seccomp)")
        }
    }
}

/// What a call outside the list gets: `ENOSYS`, as from a kernel without
/// it (libc falls back where it can, as from `clone3` to `clone`).
const REFUSED: SeccompAction = SeccompAction::Errno(libc::ENOSYS as u32);

/// The compiled filter for `mode` (on this architecture).
pub fn filter(mode: Mode) -> anyhow::Result<BpfProgram> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => seccompiler::TargetArch::x86_64,
        "aarch64" => seccompiler::TargetArch::aarch64,
        other => anyhow::bail!("no system-call list for {other}"),
    };
    let mismatch = if mode == Mode::Audit {
        SeccompAction::Log
    } else {
        REFUSED
    };
    let filter = SeccompFilter::new(rules()?, mismatch, SeccompAction::Allow, arch)?;
    Ok(filter.try_into()?)
}

/// The allow-list: each call with no conditions, or allowed only when one
/// of its rules matches.
fn rules() -> anyhow::Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    let arg = |index: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
    };
    let pid = u64::from(std::process::id());

    // Threads, never processes or namespaces: CLONE_THREAD set, no
    // CLONE_NEW* flag. (`clone3` hides its flags from the filter, so it is
    // refused and libc falls back to `clone`.)
    const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;
    const CLONE_NEW: u64 = (libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET) as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![arg(
            0,
            SeccompCmpOp::MaskedEq(CLONE_THREAD | CLONE_NEW),
            CLONE_THREAD,
        )?])?],
    );
    // Sockets of the families the host uses: Unix, IPv4, IPv6 (no raw
    // packet, netlink or other kernel interfaces).
    let socket = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .map(|family| {
            let family =
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, family as u64)?;
            Ok(SeccompRule::new(vec![family])?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    rules.insert(libc::SYS_socket, socket);
    // Signals only to itself (a panic's abort, a thread's wake-up).
    for nr in [libc::SYS_kill, libc::SYS_tgkill] {
        rules.insert(
            nr,
            vec![SeccompRule::new(vec![arg(0, SeccompCmpOp::Eq, pid)?])?],
        );
    }
    // Resource limits: its own only (0 is the caller).
    rules.insert(
        libc::SYS_prlimit64,
        vec![
            SeccompRule::new(vec![arg(0, SeccompCmpOp::Eq, 0)?])?,
            SeccompRule::new(vec![arg(0, SeccompCmpOp::Eq, pid)?])?,
        ],
    );
    // Of prctl: thread names, an anonymous mapping's name, and reading the
    // process's own auxiliary vector (how rustix learns the page size).
    const PR_SET_VMA: u64 = 0x5356_4d41;
    const PR_GET_AUXV: u64 = 0x4155_5856;
    rules.insert(
        libc::SYS_prctl,
        [
            libc::PR_SET_NAME as u64,
            libc::PR_GET_NAME as u64,
            PR_SET_VMA,
            PR_GET_AUXV,
        ]
        .into_iter()
        .map(|op| Ok(SeccompRule::new(vec![arg(0, SeccompCmpOp::Eq, op)?])?))
        .collect::<anyhow::Result<Vec<_>>>()?,
    );
    // ioctl: non-blocking and close-on-exec flags, bytes ready, what a
    // terminal check asks (a guest's `isatty`), and the scan of
    // `/proc/self/pagemap` with which the engine resets only the pages a
    // request dirtied; no terminal injection, no device control.
    // `PAGEMAP_SCAN` is `_IOWR('f', 16, struct pm_scan_arg)`, 96 bytes.
    const PAGEMAP_SCAN: u64 = 0xC060_6610;
    rules.insert(
        libc::SYS_ioctl,
        [
            libc::FIONBIO,
            libc::FIOCLEX,
            libc::FIONCLEX,
            libc::FIONREAD,
            libc::TCGETS,
            libc::TIOCGWINSZ,
        ]
        .into_iter()
        .chain([PAGEMAP_SCAN])
        .map(|request| {
            let request =
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)?;
            Ok(SeccompRule::new(vec![request])?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?,
    );
    Ok(rules)
}

/// System calls allowed with any arguments: what the host makes once
/// started, measured by running the test suite and the benches under
/// `--confine audit` (SECURITY.md, "Extending the allow-list").
const ALLOWED: &[i64] = &[
    // Memory: the engine's mappings, copy-on-write images, the allocator.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_mincore,
    libc::SYS_msync,
    // Threads and waiting.
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_getcpu,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    // Signals: the engine's trap handlers, Tokio's signal handling.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    // Time and usage.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrusage,
    libc::SYS_times,
    // Identity and the machine.
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getgroups,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getrandom,
    libc::SYS_umask,
    // File descriptors and I/O (what a path may name is Landlock's part).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fadvise64,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_utimensat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    // Sockets (which families: see `socket` in `rules`).
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    // The older x86_64 forms libc and Rust's standard library still use.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_arch_prctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_accept,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_select,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pipe,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_create,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_eventfd,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getdents,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_time,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getrlimit,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_machine() {
        let program = filter(Mode::On).unwrap();
        assert!(program.len() > ALLOWED.len(), "one test at least per call");
        for nr in [
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_clone3,
        ] {
            assert!(!ALLOWED.contains(&nr), "{nr} is never allowed");
        }
    }
}
