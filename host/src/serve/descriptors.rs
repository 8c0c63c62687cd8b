//! How the server's open-files limit is shared: a reserve for the host
//! itself, client connections, and the descriptors admitted guests may
//! hold (files of preopened directories, outgoing connections), which
//! admission counts per request like instance-pool slots.

/// Descriptors kept for the host itself: listeners, the engine, logs, the
/// configuration files a reload reads.
pub const FD_RESERVE: u64 = 256;

/// The share of the descriptors beyond [`FD_RESERVE`] that guests keep at
/// least, however many connections are asked for: a quarter.
const GUEST_SHARE_DIVISOR: u64 = 4;

/// How the open-files limit is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    /// Client connections accepted at once.
    pub(crate) connections: usize,
    /// Descriptors admitted guests may hold in all.
    pub(crate) guests: u64,
}

/// Splits `limit` open files (the soft limit; `None` when unlimited) between
/// the reserve, at most `max_connections` connections, and guests.
pub(crate) fn split(limit: Option<u64>, max_connections: usize) -> Split {
    let Some(limit) = limit else {
        return Split {
            connections: max_connections,
            guests: u64::MAX,
        };
    };
    let room = limit.saturating_sub(FD_RESERVE);
    let guests_at_least = room / GUEST_SHARE_DIVISOR;
    let connections = (max_connections as u64).min(room - guests_at_least).max(1);
    Split {
        connections: usize::try_from(connections).unwrap_or(usize::MAX),
        guests: room.saturating_sub(connections),
    }
}

/// The process's soft limit on open files, `None` when unlimited.
pub(crate) fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_what_they_ask_when_it_fits() {
        let s = split(Some(20_000), 8_192);
        assert_eq!(s.connections, 8_192);
        assert_eq!(s.guests, 20_000 - 256 - 8_192);
    }

    #[test]
    fn guests_keep_a_quarter_when_connections_ask_for_more() {
        let s = split(Some(1_256), 100_000);
        assert_eq!(s.connections, 750);
        assert_eq!(s.guests, 250);
        // Nothing is handed out twice.
        assert!(s.connections as u64 + s.guests + FD_RESERVE <= 1_256);
    }

    #[test]
    fn a_tiny_limit_still_accepts_one_connection() {
        let s = split(Some(100), 8_192);
        assert_eq!(s.connections, 1);
        assert_eq!(s.guests, 0);
    }

    #[test]
    fn no_limit_counts_nothing() {
        let s = split(None, 8_192);
        assert_eq!(s.connections, 8_192);
        assert_eq!(s.guests, u64::MAX);
    }
}
