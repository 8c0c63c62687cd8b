//! How the instance pool resets a slot between invocations, decided from
//! whether this process's memory can be swapped out.
//!
//! The fast reset asks the kernel which pages of a slot were written
//! (`PAGEMAP_SCAN`, Linux 6.7+) and restores only those. In wasmtime 48 the
//! scan sees only pages that are present: a written page that was swapped
//! out is neither restored nor decommitted, so the next invocation in that
//! slot could read what the last one wrote. (wasmtime 50 counts swapped
//! pages; wasm-run stays on the 48 LTS line.) So the scan is used only
//! where no page can be swapped out: no swap is active on the system, or
//! the process's cgroup allows it none (`memory.swap.max` is 0 for it or a
//! cgroup above it). Elsewhere slots are reset the plain way — every page
//! past the kept-resident bytes decommitted, those bytes rewritten — which
//! is correct whether a page is present or swapped.
//!
//! The decision is taken once, when the engine is built: an operator who
//! turns swap on later must restart wasm-run for it to take effect.

use std::path::Path;

/// How pool slots are reset between invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryReset {
    /// `PAGEMAP_SCAN` (where the kernel has it) finds the written pages;
    /// linear memory and tables keep [`crate::EngineConfig::keep_resident`]
    /// bytes resident. Chosen when no page can be swapped out.
    PagemapScan,
    /// No scan, and nothing kept resident: every used page is decommitted
    /// (and faulted in again by the next invocation). Chosen when swap is
    /// possible, where the scan could miss a swapped-out page.
    Decommit,
}

impl MemoryReset {
    /// The reset this process should use, read from `/proc/swaps` and the
    /// cgroup v2 hierarchy (`/proc/self/cgroup`, `/sys/fs/cgroup`).
    pub fn for_this_system() -> MemoryReset {
        let swaps = std::fs::read_to_string("/proc/swaps").ok();
        let limits = cgroup_swap_limits(Path::new("/sys/fs/cgroup"));
        MemoryReset::decide(swaps.as_deref(), &limits)
    }

    /// The decision, from the text of `/proc/swaps` (`None` if it could not
    /// be read: then swap is assumed possible) and the `memory.swap.max`
    /// of the process's cgroup and every cgroup above it (those that exist).
    pub fn decide(proc_swaps: Option<&str>, cgroup_swap_max: &[String]) -> MemoryReset {
        let Some(swaps) = proc_swaps else {
            return MemoryReset::Decommit;
        };
        // A header line, then one line per active swap area.
        let active = swaps.lines().skip(1).any(|l| !l.trim().is_empty());
        let cgroup_forbids = cgroup_swap_max.iter().any(|v| v.trim() == "0");
        if active && !cgroup_forbids {
            MemoryReset::Decommit
        } else {
            MemoryReset::PagemapScan
        }
    }

    /// Its name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            MemoryReset::PagemapScan => "pagemap-scan",
            MemoryReset::Decommit => "decommit",
        }
    }
}

/// The `memory.swap.max` of this process's cgroup v2 and of every cgroup
/// above it, from the process's own up to the root; empty without cgroup
/// v2 (or without its memory controller).
fn cgroup_swap_limits(root: &Path) -> Vec<String> {
    let Ok(membership) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    // The v2 line is `0::/path`.
    let Some(path) = membership.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Vec::new();
    };
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut limits = Vec::new();
    loop {
        if let Ok(v) = std::fs::read_to_string(dir.join("memory.swap.max")) {
            limits.push(v);
        }
        if dir == root || !dir.pop() {
            break;
        }
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

    #[test]
    fn the_scan_is_used_only_where_no_page_can_be_swapped_out() {
        let none = HEADER.to_string();
        let one = format!("{HEADER}/swapfile  file  8388604  0  -2\n");
        let max = vec!["max\n".to_string()];
        let zero_above = vec!["max\n".to_string(), "0\n".to_string()];
        assert_eq!(
            MemoryReset::decide(Some(&none), &[]),
            MemoryReset::PagemapScan
        );
        assert_eq!(
            MemoryReset::decide(Some(&none), &max),
            MemoryReset::PagemapScan
        );
        assert_eq!(MemoryReset::decide(Some(&one), &[]), MemoryReset::Decommit);
        assert_eq!(MemoryReset::decide(Some(&one), &max), MemoryReset::Decommit);
        // A cgroup (ours or one above) that allows no swap: no page of ours
        // can be swapped out, whatever the system has.
        assert_eq!(
            MemoryReset::decide(Some(&one), &zero_above),
            MemoryReset::PagemapScan
        );
        // Unknown: assume the worst.
        assert_eq!(MemoryReset::decide(None, &[]), MemoryReset::Decommit);
    }
}
