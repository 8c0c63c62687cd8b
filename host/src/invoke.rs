//! One invocation of a guest: a fresh store with its own WASI context and
//! limits, instantiate, call the entry point, classify, drop.

use std::time::Instant;

use wasmtime::Store;

use http_body_util::BodyExt as _;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use crate::accounting::Account;
use crate::error::{Error, Result};
use crate::guest::{Guest, Pre};
pub use crate::http_call::{HttpCall, HttpErrorCode, HttpResponse};
use crate::http_call::{P3Call, body_error};
use crate::invocation::wasi_builder;
pub use crate::invocation::{DirMapping, Invocation};
use crate::io::{self, Stream};
use crate::limits::Limits;
use crate::outcome::{CallEnd, Outcome, OutcomeKind, Usage, classify};
use crate::scheduler::Priority;
use crate::store::{StoreState, new_store};

impl Guest {
    /// Runs the guest once in a fresh store under `invocation.limits`.
    ///
    /// Returns `Ok(outcome)` whenever the guest ran, including when it was
    /// killed for exceeding a limit; `Err` only when the host could not set
    /// up or instantiate it (e.g. a preopened directory is missing or the
    /// instance pool is exhausted).
    ///
    /// Only commands run this way ([`GuestKind::is_command`]): a wasi:http
    /// component loads, but `run` refuses it with [`Error::WrongShape`];
    /// call it with [`Guest::handle_http`].
    ///
    /// The deadline (`timeout`) is rung by the engine's epoch ticker, so it
    /// needs no Tokio timers. The guest's own clocks do: a WASI sleep or a
    /// poll with a timeout, polled in a runtime without timers, fails that
    /// call and ends the invocation as `trapped` (`host_call`).
    ///
    /// [`GuestKind::is_command`]: crate::GuestKind::is_command
    pub async fn run(&self, invocation: Invocation) -> Result<Outcome> {
        if !self.kind().is_command() {
            return Err(Error::WrongShape {
                name: self.name().to_string(),
                message: "this is a wasi:http component (it exports \
                          `wasi:http/incoming-handler` or `wasi:http/handler`, not \
                          `wasi:cli/run`); serve it with `wasm-run serve` or call \
                          `Guest::handle_http`"
                    .into(),
            });
        }
        let prepared = self.prepare(invocation)?;
        execute(self.clone(), prepared, Entry::Command).await
    }

    /// Hands one HTTP request to a wasi:http component
    /// ([`GuestKind::HttpComponent`]) in a fresh store under
    /// `invocation.limits`, as `wasm-run serve` does.
    ///
    /// Returns at once with an [`HttpCall`]: drive (or spawn) its `run`
    /// future, which instantiates the guest, calls
    /// `wasi:http/incoming-handler.handle` and resolves to the [`Outcome`]
    /// when the guest is done; its `response` resolves as soon as the guest
    /// sets its response head, while the body streams from the still-running
    /// guest. Of the invocation, `args`, `program_name` and `stdin` are not
    /// used (a request has none); stdout and stderr go where it says.
    ///
    /// The request may be any [`http::Request`] whose body yields
    /// [`Bytes`](crate::Bytes) (e.g. `http_body_util::Full<Bytes>`, or
    /// hyper's incoming body); a bare path (`/hello`, no authority and no
    /// `Host`) is taken as `localhost`. A request that cannot be handed to
    /// a guest is [`Error::BadRequest`].
    ///
    /// Outgoing requests follow `invocation.outbound` and count against the
    /// deadline; they, like the guest's own clocks, need a Tokio runtime
    /// with timers (see [`Guest::run`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let handler = wasm_run_tests::http_guest();
    /// use std::time::Duration;
    /// use http_body_util::{BodyExt, Full};
    /// use wasm_run::{Bytes, Engine, EngineConfig, Guest, Invocation, Limits, OutcomeKind};
    ///
    /// let engine = Engine::new(EngineConfig::default())?;
    /// let guest = Guest::from_file(&engine, handler)?; // a wasi:http component
    /// let request = http::Request::get("/hello").body(Full::new(Bytes::new()))?;
    /// let invocation = Invocation {
    ///     limits: Limits {
    ///         timeout: Some(Duration::from_secs(5)),
    ///         ..Limits::default()
    ///     },
    ///     ..Invocation::default()
    /// };
    /// let call = guest.handle_http(request, invocation)?;
    /// let run = tokio::spawn(call.run); // the guest runs while the body is read
    /// let response = call.response.await?.map_err(|code| format!("{code:?}"))?;
    /// assert_eq!(response.status(), 200);
    /// let body = response.into_body().collect().await?.to_bytes();
    /// assert_eq!(body, "Hello from wasm-run over wasi:http!\n");
    /// assert_eq!(run.await??.kind, OutcomeKind::Exited(0));
    /// # Ok(()) }
    /// ```
    ///
    /// [`GuestKind::HttpComponent`]: crate::GuestKind::HttpComponent
    pub fn handle_http<B>(
        &self,
        request: http::Request<B>,
        invocation: Invocation,
    ) -> Result<HttpCall>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let request = request.map(|body| body.map_err(|e| body_error(e.into())));
        self.handle_http_request(request, invocation)
    }

    /// [`Guest::handle_http`] for a body whose errors are already
    /// wasi:http's (the server maps its own body errors to the codes a
    /// guest sees).
    pub(crate) fn handle_http_request<B>(
        &self,
        mut request: http::Request<B>,
        invocation: Invocation,
    ) -> Result<HttpCall>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.name_the_authority(&mut request)?;
        if !self.kind().is_http() {
            return Err(Error::WrongShape {
                name: self.name().to_string(),
                message: "this is a command, not a wasi:http component (it exports neither \
                          `wasi:http/incoming-handler` nor `wasi:http/handler`); run it with \
                          `Guest::run`"
                    .into(),
            });
        }
        let mut prepared = self.prepare(invocation)?;
        // The request's head and its resources are the invocation's own.
        let account = prepared.state.account.clone();
        let _charged = account.enter();
        let (response_tx, response) = tokio::sync::oneshot::channel();
        let entry = if self.kind().is_p3() {
            let (request, body_result) =
                wasmtime_wasi_http::p3::Request::from_http(prepared.state.http().hooks, request);
            Entry::HttpP3(Box::new(P3Call {
                request,
                body_result: Box::pin(body_result),
                response_tx,
                deadline: prepared
                    .limits
                    .timeout
                    .and_then(|t| prepared.started.checked_add(t))
                    .map(|at| self.engine().activity().alarm(at)),
            }))
        } else {
            let setup = |e: wasmtime::Error| Error::Setup {
                name: self.name().to_string(),
                message: format!("cannot pass the request to the guest: {e:#}"),
            };
            let incoming = prepared
                .state
                .http()
                .new_incoming_request(Scheme::Http, request)
                .map_err(setup)?;
            let outparam = prepared
                .state
                .http()
                .new_response_outparam_from_callback(move |response| {
                    // A receiver gone (the host stopped waiting) is no error.
                    let _ = response_tx.send(response.map_err(HttpErrorCode::from));
                })
                .map_err(setup)?;
            Entry::Http { incoming, outparam }
        };
        let run = execute(self.clone(), prepared, entry);
        Ok(HttpCall {
            response,
            run: Box::pin(run),
        })
    }

    /// Gives a request without an authority one: its Host header (which
    /// must be text), or `localhost` where it has none.
    fn name_the_authority<B>(&self, request: &mut http::Request<B>) -> Result<()> {
        if request.uri().authority().is_some() {
            return Ok(());
        }
        match request.headers().get(http::header::HOST) {
            Some(host) if host.to_str().is_err() => Err(Error::BadRequest {
                name: self.name().to_string(),
                message: "the Host header is not text".into(),
            }),
            Some(_) => Ok(()),
            None => {
                let localhost = http::HeaderValue::from_static("localhost");
                request.headers_mut().insert(http::header::HOST, localhost);
                Ok(())
            }
        }
    }

    /// Everything an invocation needs before its store exists: the WASI
    /// context (argv, environment, preopens, stdio) and the host state.
    fn prepare(&self, invocation: Invocation) -> Result<Prepared> {
        let started = Instant::now();
        let invalid = |reason| Error::InvalidLimits {
            name: self.name().to_string(),
            reason,
        };
        invocation.limits.validate().map_err(invalid)?;
        let account = Account::new(
            invocation
                .limits
                .max_memory
                .saturating_add(crate::store::HOST_BASE),
        );
        // The context (argv, environment, stdio buffers) is the invocation's
        // own host memory, like everything its store holds later.
        let _charged = account.enter();
        let Invocation {
            args,
            program_name,
            env,
            dirs,
            stdin,
            stdout,
            stderr,
            limits,
            outbound,
            priority,
            trace,
        } = invocation;
        let mut builder = wasi_builder(self.name(), program_name.as_deref(), &args, &env, &dirs)?;
        io::set_stdin(&mut builder, stdin);
        let stdout = io::set_output(&mut builder, Stream::Stdout, stdout, limits.max_output);
        let stderr = io::set_output(&mut builder, Stream::Stderr, stderr, limits.max_output);
        let mut state = StoreState::new(
            builder.build_p1(),
            outbound,
            limits.max_memory,
            account.clone(),
            !self.engine().config().pooling,
        );
        state.outbound.set_trace(trace);
        Ok(Prepared {
            started,
            state,
            limits,
            priority,
            stdout,
            stderr,
        })
    }
}

/// An invocation prepared up to its store.
struct Prepared {
    started: Instant,
    state: StoreState,
    limits: Limits,
    priority: Priority,
    stdout: Option<io::CaptureBuffer>,
    stderr: Option<io::CaptureBuffer>,
}

/// Which export an invocation calls.
enum Entry {
    /// `_start` or `wasi:cli/run`.
    Command,
    /// `wasi:http/incoming-handler.handle` with this request.
    Http {
        incoming: Resource<HostIncomingRequest>,
        outparam: Resource<HostResponseOutparam>,
    },
    /// `wasi:http/handler.handle` (WASI 0.3) with this request.
    HttpP3(Box<P3Call>),
}

/// The one path every invocation takes: the scheduler meters its CPU; a
/// fresh store gets its limits; the entry is called under the deadline;
/// the end is classified; the store is dropped before the outcome returns.
async fn execute(guest: Guest, prepared: Prepared, entry: Entry) -> Result<Outcome> {
    let (state, limits) = (prepared.state, prepared.limits);
    let (started, priority) = (prepared.started, prepared.priority);
    let (stdout, stderr) = (prepared.stdout, prepared.stderr);
    let engine = guest.engine().clone();
    let account = state.account.clone();
    let watched: Vec<io::CaptureBuffer> = stdout.iter().chain(&stderr).cloned().collect();
    let invocation = async move {
        // The epoch ticks that interrupt this store come while it exists.
        let running = guest.engine().activity().enter();
        let mut store = new_store(
            guest.engine(),
            guest.wasmtime_engine(),
            state,
            &limits,
            started,
        );
        let result = match refuse_unfitting_state(&guest, &mut store) {
            Err(refused) => Some(Err(refused)),
            Ok(()) => {
                let account = store.data().account.clone();
                let cpu = store.data().cpu.clone();
                let output = || watched.iter().try_for_each(|o| o.killing_overflow());
                let call = call_entry(guest.pre(), &mut store, entry);
                let watched = until_limits_exceeded(&account, cpu.as_deref(), output, call);
                with_deadline(guest.engine().activity(), &limits, started, watched).await
            }
        };
        let concluded = conclude(&guest, &store, &limits, started, result);
        drop(store);
        drop(running);
        concluded
    };
    // Every poll — instantiation, host calls, wasm, and the store's drop —
    // is charged to the invocation's account.
    let (concluded, cpu_time) = engine
        .scheduler()
        .run(account.scope(invocation), priority)
        .await;
    let (kind, mut usage) = concluded?;
    usage.cpu_time = cpu_time;
    Ok(Outcome {
        kind,
        usage,
        stdout: stdout.map(|c| c.take()),
        stderr: stderr.map(|c| c.take()),
    })
}

/// Refuses to instantiate a guest whose instance state (known from its
/// modules: globals, functions, tables, memories of every core instance)
/// does not fit in what its cap leaves, so that the host never allocates
/// it. Instance state is allocated while instantiating, in one poll, before
/// any other check could run.
fn refuse_unfitting_state(guest: &Guest, store: &mut Store<StoreState>) -> Result<(), Failure> {
    let needed = guest.footprint().instance_state_bytes;
    let state = store.data_mut();
    let left = state.limiter.left();
    if needed <= left {
        return Ok(());
    }
    state.limiter.killed = true;
    Err(Failure::Instantiating(wasmtime::Error::msg(format!(
        "the guest's instance state needs about {needed} bytes of host memory, more than the \
         {left} bytes its memory cap leaves"
    ))))
}

/// Runs `call`, but gives up on it (dropping it, which cancels the guest)
/// as soon as its host memory passed what the cap leaves, its CPU time its
/// limit, or its output a cap that kills (`output`): checked each time the
/// call yields, which a running guest does at every epoch tick. With a
/// CPU-time limit, each poll is timed with the thread CPU clock.
async fn until_limits_exceeded(
    account: &Account,
    cpu: Option<&crate::scheduler::CpuBudget>,
    output: impl Fn() -> Result<(), crate::outcome::OutputCapExceeded>,
    call: impl std::future::Future<Output = Result<i32, Failure>>,
) -> Result<i32, Failure> {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        if let Some(cpu) = cpu {
            cpu.begin();
        }
        // A panic while polling the guest (a bug in the engine or a host
        // call that a guest can reach, such as wasmtime advisory
        // GHSA-xrvr-8678-5wp8) ends this invocation as trapped, not the
        // host: the store is dropped like that of any killed guest.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.as_mut().poll(cx)))
                .unwrap_or_else(|panic| {
                    std::task::Poll::Ready(Err(Failure::Running(host_panic(&*panic))))
                });
        if let Some(cpu) = cpu {
            cpu.end();
        }
        match polled {
            std::task::Poll::Pending if account.exceeded() => {
                std::task::Poll::Ready(Err(Failure::HostMemory))
            }
            std::task::Poll::Pending if cpu.is_some_and(|c| c.exceeded()) => {
                std::task::Poll::Ready(Err(Failure::Cpu))
            }
            std::task::Poll::Pending => match output() {
                Ok(()) => std::task::Poll::Pending,
                Err(cap) => std::task::Poll::Ready(Err(Failure::Running(cap.into()))),
            },
            polled => polled,
        }
    })
    .await
}

/// The error for a panic caught while running a guest: the host call it
/// happened in failed, with the panic's message.
fn host_panic(panic: &(dyn std::any::Any + Send)) -> wasmtime::Error {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    wasmtime::Error::msg(format!(
        "the host panicked while running the guest: {message}"
    ))
}

/// Runs `call` under the invocation's wall-clock deadline; `None` if the
/// deadline fired first (the call is dropped, which cancels the guest even
/// while it is blocked in a host call). The engine's ticker rings the
/// deadline, so it needs no Tokio timers.
async fn with_deadline<T>(
    activity: &std::sync::Arc<crate::ticker::Activity>,
    limits: &Limits,
    started: Instant,
    call: impl std::future::Future<Output = T>,
) -> Option<T> {
    // A deadline too far away to represent is no deadline.
    let Some(deadline) = limits.timeout.and_then(|t| started.checked_add(t)) else {
        return Some(call.await);
    };
    let mut call = std::pin::pin!(call);
    let mut alarm = std::pin::pin!(activity.alarm(deadline));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(done) = call.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(done));
        }
        alarm.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Turns a finished (or timed-out) call into the outcome and usage, or into
/// a host error when instantiation failed for a reason not the guest's.
fn conclude(
    guest: &Guest,
    store: &Store<StoreState>,
    limits: &Limits,
    started: Instant,
    result: Option<Result<i32, Failure>>,
) -> Result<(OutcomeKind, Usage)> {
    let killed = store.data().limiter.killed || store.data().account.exceeded();
    let cpu_killed = store.data().cpu.as_ref().is_some_and(|c| c.exceeded());
    let end = match result {
        None => CallEnd::TimedOut,
        Some(Ok(code)) => CallEnd::Returned(Ok(code)),
        Some(Err(Failure::Running(e))) => CallEnd::Returned(Err(e)),
        Some(Err(Failure::HostMemory)) => CallEnd::Returned(Err(wasmtime::Error::msg(
            "host memory held for the guest passed its memory cap",
        ))),
        Some(Err(Failure::Cpu)) => CallEnd::Returned(Err(wasmtime::Error::msg(
            "the guest passed its CPU-time limit",
        ))),
        Some(Err(Failure::Instantiating(e))) => {
            // The guest's own doing: a trap, an exit or an uncaught
            // exception in its start function, or a limit it hit.
            let guest_caused = killed
                || cpu_killed
                || e.downcast_ref::<wasmtime::Trap>().is_some()
                || e.downcast_ref::<wasmtime::ThrownException>().is_some()
                || e.downcast_ref::<wasmtime_wasi::I32Exit>().is_some()
                || crate::outcome::exceeds_host_allowance(&e);
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                return Err(Error::Capacity {
                    name: guest.name().to_string(),
                    message: format!("{e:#}"),
                });
            }
            if !guest_caused {
                return Err(Error::Instantiate {
                    name: guest.name().to_string(),
                    message: format!("{e:#}"),
                });
            }
            CallEnd::Returned(Err(e))
        }
    };
    let kind = classify(end, killed, cpu_killed);
    let fuel_consumed = match (guest.engine().config().fuel, store.get_fuel()) {
        (true, Ok(left)) => Some(limits.fuel.unwrap_or(u64::MAX) - left),
        _ => None,
    };
    let usage = Usage {
        fuel_consumed,
        peak_memory_bytes: store.data().limiter.peak(),
        host_memory_peak_bytes: store.data().account.peak(),
        wall_time: started.elapsed(),
        cpu_time: std::time::Duration::ZERO,
        instantiate_time: store
            .data()
            .instantiated
            .map_or(std::time::Duration::ZERO, |at| {
                at.saturating_duration_since(started)
            }),
    };
    Ok((kind, usage))
}

/// Where a failed call failed.
enum Failure {
    /// While instantiating: a trap or limit here is still the guest's
    /// outcome (e.g. initial memory over the cap, a trapping start function);
    /// anything else is a host failure.
    Instantiating(wasmtime::Error),
    /// While running the entry point.
    Running(wasmtime::Error),
    /// The host memory charged to the invocation passed what its cap
    /// leaves (seen between two polls).
    HostMemory,
    /// The invocation passed its CPU-time limit (seen between two polls).
    Cpu,
}

/// Instantiates and calls the entry point; `Ok(code)` is the exit code.
async fn call_entry(
    pre: &Pre,
    store: &mut Store<StoreState>,
    entry: Entry,
) -> Result<i32, Failure> {
    let ended = match (pre, entry) {
        (Pre::Core(pre), Entry::Command) => {
            let instance = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(Failure::Instantiating)?;
            store.data_mut().instantiated = Some(Instant::now());
            let start = instance
                .get_typed_func::<(), ()>(&mut *store, "_start")
                .map_err(Failure::Instantiating)?;
            start.call_async(&mut *store, ()).await.map(|()| Ok(()))
        }
        (Pre::Command(pre), Entry::Command) => {
            let command = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(Failure::Instantiating)?;
            store.data_mut().instantiated = Some(Instant::now());
            command.wasi_cli_run().call_run(&mut *store).await
        }
        (Pre::Http(pre), Entry::Http { incoming, outparam }) => {
            let proxy = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(Failure::Instantiating)?;
            store.data_mut().instantiated = Some(Instant::now());
            let handler = proxy.wasi_http_incoming_handler();
            handler
                .call_handle(&mut *store, incoming, outparam)
                .await
                .map(Ok)
        }
        (Pre::CommandP3(pre), Entry::Command) => {
            let command = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(Failure::Instantiating)?;
            store.data_mut().instantiated = Some(Instant::now());
            store
                .run_concurrent(async |store| command.wasi_cli_run().call_run(store).await)
                .await
                .and_then(|status| status)
        }
        (Pre::HttpP3(pre), Entry::HttpP3(call)) => {
            let service = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(Failure::Instantiating)?;
            store.data_mut().instantiated = Some(Instant::now());
            call.call(store, service).await.map(Ok)
        }
        _ => unreachable!("`run` and `handle_http` check the guest's kind before calling"),
    };
    // `Err(())` is a command's `wasi:cli/run` failing: exit code 1.
    match ended.map_err(Failure::Running)? {
        Ok(()) => Ok(0),
        Err(()) => Ok(1),
    }
}

#[cfg(test)]
mod tests {
    use super::{Failure, until_limits_exceeded};

    #[tokio::test]
    async fn a_panic_while_polling_a_guest_ends_the_invocation_not_the_host() {
        let account = crate::Account::new(u64::MAX);
        let panicking = std::future::poll_fn(|_| -> std::task::Poll<Result<i32, Failure>> {
            panic!("a bug the guest reached")
        });
        let ended = until_limits_exceeded(&account, None, || Ok(()), panicking).await;
        match ended {
            Err(Failure::Running(e)) => {
                let message = e.to_string();
                assert!(message.contains("the host panicked"), "{message}");
                assert!(message.contains("a bug the guest reached"), "{message}");
            }
            _ => panic!("the panic should end the invocation as a failed host call"),
        }
    }
}
