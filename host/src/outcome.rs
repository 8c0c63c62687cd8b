//! What happened to one invocation, and the single classifier that decides it.
//!
//! The same vocabulary is used by the library, the CLI's exit status and JSON
//! report, HTTP responses, logs and metrics: `exited`, `fuel_exhausted`,
//! `memory_exceeded`, `deadline_exceeded`, `trapped`.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use wasmtime::Trap as WasmTrap;
use wasmtime::component::ResourceTableError;
use wasmtime_wasi::I32Exit;
use wasmtime_wasi_http::FieldMapError;

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// The guest returned or called `exit`; the value is its exit code
    /// (0 when `_start`/`run` returned normally, 1 when a component's `run`
    /// returned an error).
    Exited(i32),
    /// The guest used up its fuel budget.
    FuelExhausted,
    /// The guest used more CPU time than [`crate::Limits::max_cpu`].
    CpuExceeded,
    /// The guest tried to grow its total memory (linear memory, tables and
    /// the host memory charged to it) past the cap, or to hold more host
    /// resources than allowed ([`crate::MAX_RESOURCES`]), and was killed.
    MemoryExceeded,
    /// The guest was still running (or blocked in a host call) at its deadline.
    DeadlineExceeded,
    /// The guest trapped: unreachable (e.g. a Rust panic), stack overflow,
    /// out-of-bounds access, a failed host call, an output cap. The
    /// [`Trap`] says which ([`Trap::reason`]) and how (its one-line
    /// message).
    Trapped(Trap),
}

/// A trap: why (typed) and a one-line message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Trap {
    /// What kind of trap it was.
    pub reason: TrapReason,
    /// One line saying what happened, and in which wasm function when
    /// known. (The full error, backtrace included, is logged at debug
    /// level.)
    pub message: String,
}

impl Trap {
    /// A trap of `reason` with `message`, escaped and cut to
    /// [`crate::log_text::MAX_LOGGED_BYTES`]: it goes into error bodies,
    /// reports and log lines, and parts of it (function names) come from
    /// the module.
    pub fn new(reason: TrapReason, message: impl Into<String>) -> Trap {
        let message = message.into();
        Trap {
            reason,
            message: crate::log_text::safe(&message, crate::log_text::MAX_LOGGED_BYTES),
        }
    }
}

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a guest trapped. Non-exhaustive: new reasons may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrapReason {
    /// The wasm call stack was exhausted (e.g. unbounded recursion).
    StackOverflow,
    /// An `unreachable` instruction: how Rust, C and others abort, e.g. a
    /// panic.
    Unreachable,
    /// A memory or table access out of bounds, or a misaligned atomic.
    OutOfBounds,
    /// Integer division by zero, overflow, or a bad float-to-int
    /// conversion.
    Arithmetic,
    /// An indirect call through a null or mistyped function reference, or
    /// another null reference.
    BadReference,
    /// A write past the output cap ([`crate::Output::CaptureOrKill`]).
    OutputCapExceeded,
    /// A host call failed in a way the guest cannot handle (e.g. a wasi:http
    /// stream written past its permit, or a resource used after it was
    /// dropped).
    HostCall,
    /// Anything else wasmtime reports as a trap.
    Other,
}

impl TrapReason {
    /// The reason's name (the report's `trap` field, the `trap` metric
    /// label), e.g. `"stack_overflow"`.
    pub fn name(self) -> &'static str {
        match self {
            TrapReason::StackOverflow => "stack_overflow",
            TrapReason::Unreachable => "unreachable",
            TrapReason::OutOfBounds => "out_of_bounds",
            TrapReason::Arithmetic => "arithmetic",
            TrapReason::BadReference => "bad_reference",
            TrapReason::OutputCapExceeded => "output_cap_exceeded",
            TrapReason::HostCall => "host_call",
            TrapReason::Other => "other",
        }
    }

    fn of(trap: WasmTrap) -> TrapReason {
        match trap {
            WasmTrap::StackOverflow => TrapReason::StackOverflow,
            WasmTrap::UnreachableCodeReached => TrapReason::Unreachable,
            WasmTrap::MemoryOutOfBounds
            | WasmTrap::HeapMisaligned
            | WasmTrap::TableOutOfBounds
            | WasmTrap::ArrayOutOfBounds => TrapReason::OutOfBounds,
            WasmTrap::IntegerOverflow
            | WasmTrap::IntegerDivisionByZero
            | WasmTrap::BadConversionToInteger => TrapReason::Arithmetic,
            WasmTrap::IndirectCallToNull
            | WasmTrap::BadSignature
            | WasmTrap::NullReference
            | WasmTrap::CastFailure => TrapReason::BadReference,
            _ => TrapReason::Other,
        }
    }
}

impl OutcomeKind {
    /// The outcome's name in the shared vocabulary, e.g. `"memory_exceeded"`.
    pub fn name(&self) -> &'static str {
        match self {
            OutcomeKind::Exited(_) => "exited",
            OutcomeKind::FuelExhausted => "fuel_exhausted",
            OutcomeKind::CpuExceeded => "cpu_exceeded",
            OutcomeKind::MemoryExceeded => "memory_exceeded",
            OutcomeKind::DeadlineExceeded => "deadline_exceeded",
            OutcomeKind::Trapped(_) => "trapped",
        }
    }

    /// The exit status `wasm-run run` uses for this outcome: the guest's own
    /// code when it exited, otherwise 124 deadline, 137 memory, 152 fuel
    /// (128 + SIGXCPU), 134 trapped.
    pub fn exit_status(&self) -> i32 {
        match self {
            OutcomeKind::Exited(code) => *code,
            OutcomeKind::DeadlineExceeded => 124,
            OutcomeKind::MemoryExceeded => 137,
            OutcomeKind::FuelExhausted | OutcomeKind::CpuExceeded => 152,
            OutcomeKind::Trapped(_) => 134,
        }
    }
}

/// Resources one invocation used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Fuel consumed; `None` when the engine does not meter fuel.
    pub fuel_consumed: Option<u64>,
    /// The highest total memory (linear memory plus tables, at
    /// [`crate::TABLE_ELEMENT_BYTES`] per element) the invocation
    /// reached, in bytes.
    pub peak_memory_bytes: u64,
    /// The most host memory charged to the invocation at once, in bytes:
    /// its store, instance state, WASI and wasi:http resources, buffers and
    /// copies of host-call arguments (see [`crate::accounting`]; 0 when the
    /// accounting allocator is not installed). It counts against the same
    /// cap, [`crate::Limits::max_memory`], as linear memory and tables.
    pub host_memory_peak_bytes: u64,
    /// Wall time from the start of instantiation to the end of the call.
    pub wall_time: Duration,
    /// CPU time the invocation used: time running wasm and synchronous host
    /// calls (measured around each poll of the invocation), not time spent
    /// waiting for I/O or timers.
    pub cpu_time: Duration,
    /// Wall time instantiation took (the first part of
    /// [`Usage::wall_time`]); zero when it did not finish.
    pub instantiate_time: Duration,
}

/// The result of one invocation that ran: how it ended, what it used, and
/// any output that was captured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub kind: OutcomeKind,
    /// What it used.
    pub usage: Usage,
    /// Captured stdout, when [`crate::Output::Capture`] was asked for.
    pub stdout: Option<CapturedOutput>,
    /// Captured stderr, when [`crate::Output::Capture`] was asked for.
    pub stderr: Option<CapturedOutput>,
}

/// Output captured from the guest, capped at [`crate::Limits::max_output`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    /// The bytes kept (at most the cap).
    pub bytes: Bytes,
    /// Whether the guest wrote more than the cap; the rest was discarded.
    pub truncated: bool,
}

impl Outcome {
    /// A human-readable explanation for outcomes other than a clean exit.
    pub fn message(&self) -> Option<String> {
        let fuel = self.usage.fuel_consumed.unwrap_or(0);
        match &self.kind {
            OutcomeKind::Exited(_) => None,
            OutcomeKind::FuelExhausted => Some(format!(
                "guest ran out of fuel after consuming {fuel} units"
            )),
            OutcomeKind::MemoryExceeded => Some(format!(
                "guest tried to grow its memory past the cap, or to make the host hold more \
                 than the cap leaves (peak {} bytes of linear memory and tables, {} bytes of \
                 host memory)",
                self.usage.peak_memory_bytes, self.usage.host_memory_peak_bytes
            )),
            OutcomeKind::CpuExceeded => Some(format!(
                "guest used more than its CPU-time limit ({} ms of CPU used)",
                self.usage.cpu_time.as_millis()
            )),
            OutcomeKind::DeadlineExceeded => Some(format!(
                "guest did not finish within its deadline ({} ms elapsed)",
                self.usage.wall_time.as_millis()
            )),
            OutcomeKind::Trapped(trap) => Some(trap.message.clone()),
        }
    }

    /// The JSON usage report of `wasm-run run --report`.
    pub fn report(&self) -> Report {
        Report {
            outcome: self.kind.name(),
            exit_code: match self.kind {
                OutcomeKind::Exited(code) => Some(code),
                _ => None,
            },
            fuel_consumed: self.usage.fuel_consumed,
            peak_memory_bytes: self.usage.peak_memory_bytes,
            host_memory_peak_bytes: self.usage.host_memory_peak_bytes,
            wall_time_us: u64::try_from(self.usage.wall_time.as_micros()).unwrap_or(u64::MAX),
            message: self.message(),
            trap: match &self.kind {
                OutcomeKind::Trapped(trap) => Some(trap.reason.name()),
                _ => None,
            },
        }
    }
}

/// The usage report: exactly the fields of the `run` contract (README, `wasm-run run --help`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Outcome name, e.g. `"exited"`.
    pub outcome: &'static str,
    /// The guest's exit code when it exited, otherwise `null`.
    pub exit_code: Option<i32>,
    /// Fuel consumed, `null` when fuel is not metered.
    pub fuel_consumed: Option<u64>,
    /// Peak total memory (linear memory and tables) in bytes.
    pub peak_memory_bytes: u64,
    /// Peak host memory charged to the invocation, in bytes (an added
    /// field; see [`Usage::host_memory_peak_bytes`]).
    pub host_memory_peak_bytes: u64,
    /// Wall time in microseconds.
    pub wall_time_us: u64,
    /// Explanation for anything but a clean exit, otherwise `null`.
    pub message: Option<String>,
    /// For a trap, its reason ([`TrapReason::name`], e.g.
    /// `"stack_overflow"`); absent otherwise (an added field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trap: Option<&'static str>,
}

/// The trap of a guest that wrote past its output cap under
/// [`crate::Output::CaptureOrKill`].
#[derive(Debug, thiserror::Error)]
#[error("output cap of {0} bytes exceeded")]
pub(crate) struct OutputCapExceeded(pub(crate) usize);

impl OutputCapExceeded {
    #[cfg(test)]
    pub(crate) fn new(cap: usize) -> Self {
        OutputCapExceeded(cap)
    }
}

/// What the host observed about a finished call, handed to [`classify`].
#[derive(Debug)]
pub(crate) enum CallEnd {
    /// The call returned; `Ok(code)` carries the exit code.
    Returned(wasmtime::Result<i32>),
    /// The host-side deadline fired while the guest was blocked in a host
    /// call (or never yielded back to wasm).
    TimedOut,
}

/// The one place that decides an invocation's outcome.
///
/// `memory_killed` is the limiter's own record that it refused a grow: a
/// refused grow is a kill, whatever error the guest's code turned it into.
pub(crate) fn classify(end: CallEnd, memory_killed: bool, cpu_killed: bool) -> OutcomeKind {
    if memory_killed {
        return OutcomeKind::MemoryExceeded;
    }
    if cpu_killed {
        return OutcomeKind::CpuExceeded;
    }
    let err = match end {
        CallEnd::TimedOut => return OutcomeKind::DeadlineExceeded,
        CallEnd::Returned(Ok(code)) => return OutcomeKind::Exited(code),
        CallEnd::Returned(Err(err)) => err,
    };
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return OutcomeKind::Exited(exit.0);
    }
    if exceeds_host_allowance(&err) {
        return OutcomeKind::MemoryExceeded;
    }
    tracing::debug!(error = %format!("{err:?}"), "the guest trapped");
    match err.downcast_ref::<WasmTrap>() {
        Some(WasmTrap::OutOfFuel) => OutcomeKind::FuelExhausted,
        Some(WasmTrap::Interrupt) => OutcomeKind::DeadlineExceeded,
        Some(trap) => OutcomeKind::Trapped(Trap::new(
            TrapReason::of(*trap),
            in_function(trap.to_string(), &err),
        )),
        None => {
            let reason = if err.chain().any(|e| e.is::<OutputCapExceeded>()) {
                TrapReason::OutputCapExceeded
            } else {
                TrapReason::HostCall
            };
            // The cause, not the chain: wasmtime wraps a host call's error in
            // its wasm backtrace, which goes to the debug log above.
            let cause = err.root_cause().to_string();
            let line = cause.lines().next().unwrap_or_default().to_string();
            OutcomeKind::Trapped(Trap::new(reason, in_function(line, &err)))
        }
    }
}

/// Whether the call failed because the guest asked the host to hold more
/// memory on its behalf than its allowance: its resource table is full
/// ([`crate::MAX_RESOURCES`]) or a wasi:http fields map would pass
/// [`crate::MAX_FIELDS_BYTES`] (wasi:http 0.2 makes that a trap). Either
/// is a kill for memory.
pub(crate) fn exceeds_host_allowance(err: &wasmtime::Error) -> bool {
    let table_full = |e: &(dyn std::error::Error + 'static)| {
        matches!(e.downcast_ref(), Some(ResourceTableError::Full))
    };
    let fields_too_big = |e: &(dyn std::error::Error + 'static)| {
        matches!(
            e.downcast_ref(),
            Some(FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields)
        )
    };
    matches!(err.downcast_ref(), Some(ResourceTableError::Full))
        || matches!(
            err.downcast_ref(),
            Some(FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields)
        )
        || err.chain().any(|e| table_full(e) || fields_too_big(e))
}

/// `message` plus the innermost named wasm function, if known.
fn in_function(message: String, err: &wasmtime::Error) -> String {
    let frame = err
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| {
            bt.frames()
                .iter()
                .find_map(|f| f.func_name().map(str::to_owned))
        });
    match frame {
        Some(func) => format!(
            "{message} (in `{}`)",
            crate::log_text::LogText::with_max(&func, crate::log_text::MAX_NAME_BYTES)
        ),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_per_contract() {
        assert_eq!(OutcomeKind::Exited(7).exit_status(), 7);
        assert_eq!(OutcomeKind::DeadlineExceeded.exit_status(), 124);
        assert_eq!(OutcomeKind::MemoryExceeded.exit_status(), 137);
        assert_eq!(OutcomeKind::FuelExhausted.exit_status(), 152);
        let trap = Trap::new(TrapReason::Other, "x");
        assert_eq!(OutcomeKind::Trapped(trap).exit_status(), 134);
    }

    #[test]
    fn classify_prefers_the_limiters_record() {
        let err = wasmtime::Error::from(WasmTrap::UnreachableCodeReached);
        assert_eq!(
            classify(CallEnd::Returned(Err(err)), true, false),
            OutcomeKind::MemoryExceeded
        );
    }

    #[test]
    fn classify_traps_and_exits() {
        let c = |e: wasmtime::Error| classify(CallEnd::Returned(Err(e)), false, false);
        assert_eq!(c(WasmTrap::OutOfFuel.into()), OutcomeKind::FuelExhausted);
        assert_eq!(c(WasmTrap::Interrupt.into()), OutcomeKind::DeadlineExceeded);
        assert_eq!(c(I32Exit(3).into()), OutcomeKind::Exited(3));
        assert_eq!(c(WasmTrap::StackOverflow.into()).name(), "trapped");
        let reason = |e: wasmtime::Error| match c(e) {
            OutcomeKind::Trapped(trap) => trap.reason,
            other => panic!("{other:?}"),
        };
        for (trap, expected) in [
            (WasmTrap::StackOverflow, TrapReason::StackOverflow),
            (WasmTrap::UnreachableCodeReached, TrapReason::Unreachable),
            (WasmTrap::MemoryOutOfBounds, TrapReason::OutOfBounds),
            (WasmTrap::IntegerDivisionByZero, TrapReason::Arithmetic),
            (WasmTrap::IndirectCallToNull, TrapReason::BadReference),
        ] {
            assert_eq!(reason(trap.into()), expected, "{trap:?}");
        }
        let cap = wasmtime::Error::from(OutputCapExceeded::new(8))
            .context("error while executing at wasm backtrace:\n    0: 0x1 - <unknown>");
        match c(cap) {
            OutcomeKind::Trapped(trap) => {
                assert_eq!(trap.reason, TrapReason::OutputCapExceeded);
                assert_eq!(trap.message, "output cap of 8 bytes exceeded");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c(wasmtime::Error::from(ResourceTableError::Full).context("pushing fields")),
            OutcomeKind::MemoryExceeded
        );
        assert_eq!(c(ResourceTableError::NotPresent.into()).name(), "trapped");
        assert_eq!(
            c(wasmtime::Error::from(FieldMapError::TotalSizeTooBig)),
            OutcomeKind::MemoryExceeded
        );
        assert_eq!(
            classify(CallEnd::Returned(Ok(0)), false, false),
            OutcomeKind::Exited(0)
        );
        assert_eq!(
            classify(CallEnd::TimedOut, false, false),
            OutcomeKind::DeadlineExceeded
        );
        // A CPU-time kill is the verdict even if the wall clock ran out too.
        assert_eq!(
            classify(CallEnd::TimedOut, false, true),
            OutcomeKind::CpuExceeded
        );
        assert_eq!(OutcomeKind::CpuExceeded.exit_status(), 152);
        assert_eq!(OutcomeKind::CpuExceeded.name(), "cpu_exceeded");
    }

    #[test]
    fn report_has_the_contract_fields_and_the_host_memory_peak() {
        let o = Outcome {
            kind: OutcomeKind::FuelExhausted,
            usage: Usage {
                fuel_consumed: Some(10),
                peak_memory_bytes: 65536,
                host_memory_peak_bytes: 4096,
                wall_time: Duration::from_micros(1500),
                cpu_time: Duration::from_micros(900),
                instantiate_time: Duration::from_micros(300),
            },
            stdout: None,
            stderr: None,
        };
        let v = serde_json::to_value(o.report()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "exit_code",
                "fuel_consumed",
                "host_memory_peak_bytes",
                "message",
                "outcome",
                "peak_memory_bytes",
                "wall_time_us"
            ]
        );
        assert_eq!(v["outcome"], "fuel_exhausted");
        assert!(v["exit_code"].is_null());
        assert_eq!(v["wall_time_us"], 1500);
    }
}
