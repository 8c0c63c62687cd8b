//! The part of serving a request that does not depend on the guest's kind:
//! the guest runs in its own task (so its response body can stream while it
//! runs, and a client that goes away cannot cancel it half-way through its
//! bookkeeping), the task reports one [`Finished`] value, and
//! [`answer_for`] is the one mapping from how a guest ended to what the
//! client is told when the guest did not answer itself.
//!
//! `cgi_guest` and `http_guest` only differ in how a request reaches the
//! guest and how its response head comes back; both hand that head to
//! [`Exchange::respond`].

use std::future::Future;

use bytes::Bytes;
use http::Response;
use http_body::Body as HttpBody;
use tokio::sync::watch;

use super::record::Record;
use super::request_body::BodyFlag;
use super::response::{
    Body, BodyError, Coalesced, HostAnswer, Verdict, coalesce, sanitize_guest_headers,
};
use super::routes::RouteRuntime;
use crate::admission::Permit;
use crate::{Outcome, OutcomeKind, Priority};

/// What a connection's requests left behind: strikes for killed requests
/// (trapped, or out of fuel, memory, time or CPU). Each killed request adds
/// [`STRIKES_PER_KILL`] (up to [`MAX_STRIKES`]), each request that ends
/// cleanly takes one away; while any are left, the connection's requests
/// start at [`Priority::Background`]. A client whose requests keep being
/// killed only gets the CPU that other clients' fresh requests leave — and
/// one that alternates killed and clean requests stays there, since two
/// clean requests are needed to undo one kill.
#[derive(Debug, Clone, Default)]
pub(crate) struct Standing(std::sync::Arc<std::sync::atomic::AtomicU8>);

/// Strikes a killed request adds to its connection's standing.
pub(crate) const STRIKES_PER_KILL: u8 = 2;

/// Most strikes a connection holds: after a run of kills, eight clean
/// requests restore its priority.
pub(crate) const MAX_STRIKES: u8 = 8;

impl Standing {
    /// Where the connection's next request starts.
    pub(crate) fn priority(&self) -> Priority {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            Priority::Background
        } else {
            Priority::Normal
        }
    }

    fn remember(&self, finished: &Finished) {
        // Killed: it ran, but not to its own end (a host error is not the
        // client's doing, and changes nothing).
        let killed = matches!(finished, Finished::Outcome(_)) && !finished.completed();
        let clean = finished.completed();
        if !killed && !clean {
            return;
        }
        let _ = self.0.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |strikes| {
                Some(if killed {
                    strikes.saturating_add(STRIKES_PER_KILL).min(MAX_STRIKES)
                } else {
                    strikes.saturating_sub(1)
                })
            },
        );
    }
}

/// Where a connection came from and arrived at (for CGI variables), and
/// its standing (how its last request ended).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) local: std::net::SocketAddr,
    pub(crate) remote: std::net::SocketAddr,
    pub(crate) standing: Standing,
}

/// How a guest's task ended.
#[derive(Debug, Clone)]
pub(crate) enum Finished {
    /// The guest ran and ended this way (including being killed).
    Outcome(OutcomeKind),
    /// The host could not run it (the detail is for the log).
    HostError(String),
    /// No free instance slot: answered 503 like a full memory budget.
    Overloaded,
    /// The task panicked (a host bug); answered as a host error.
    Lost,
}

impl Finished {
    /// Whether the guest ran to its own end: it returned or exited (with any
    /// code, as a CGI program's exit code does not unsay the response it
    /// wrote), rather than being killed or failing to start.
    pub(crate) fn completed(&self) -> bool {
        matches!(self, Finished::Outcome(OutcomeKind::Exited(_)))
    }
}

/// A guest running in its own task for one request. The task publishes
/// one [`Finished`]; the response's verdict and the host's answer both
/// derive from it.
pub(crate) struct GuestTask {
    finished: watch::Receiver<Option<Finished>>,
    body_flag: BodyFlag,
}

impl GuestTask {
    /// Spawns `run` (a [`crate::Guest::run`] or
    /// [`crate::HttpCall::run`] future). When it ends, the outcome and
    /// usage go to the request's record and the budget permit is released —
    /// before the client has necessarily read the response.
    pub(crate) fn spawn(
        run: impl Future<Output = crate::Result<Outcome>> + Send + 'static,
        exchange: &Exchange<'_>,
        permit: Permit,
    ) -> GuestTask {
        let (done, finished) = watch::channel(None);
        let record = exchange.record.clone();
        let standing = exchange.standing.clone();
        tokio::spawn(async move {
            let finished = match run.await {
                Ok(outcome) => {
                    record.set_outcome(outcome.kind.clone(), outcome.usage);
                    Finished::Outcome(outcome.kind)
                }
                Err(crate::Error::Capacity { .. }) => Finished::Overloaded,
                Err(e) => Finished::HostError(e.to_string()),
            };
            drop(permit);
            standing.remember(&finished);
            let _ = done.send(Some(finished));
        });
        GuestTask {
            finished,
            body_flag: exchange.body_flag.clone(),
        }
    }

    /// Waits for the guest's end (a task that panicked is `Lost`).
    pub(crate) async fn finished(mut self) -> Finished {
        match self.finished.wait_for(Option::is_some).await {
            Ok(finished) => finished.clone().unwrap_or(Finished::Lost),
            Err(_) => Finished::Lost,
        }
    }

    /// Resolves to whether the response may end cleanly: the guest
    /// completed and the request body did not fail.
    fn verdict(&self) -> Verdict {
        let task = GuestTask {
            finished: self.finished.clone(),
            body_flag: self.body_flag.clone(),
        };
        Box::pin(async move {
            let flag = task.body_flag.clone();
            task.finished().await.completed() && !flag.is_set()
        })
    }
}

/// One request being answered: where it goes, what is recorded about it,
/// and whether its body failed.
pub(crate) struct Exchange<'a> {
    pub(crate) route: &'a RouteRuntime,
    pub(crate) record: Record,
    pub(crate) body_flag: BodyFlag,
    /// Where this request's guest starts (from the connection's standing).
    pub(crate) priority: Priority,
    /// The connection's standing, which this request's end updates.
    pub(crate) standing: Standing,
}

impl Exchange<'_> {
    /// The host's answer, unless the request body failed, which explains
    /// the request's end better (the guest saw its stdin or body fail).
    pub(crate) fn answer(&self, answer: HostAnswer) -> Response<Body> {
        match self.body_flag.fault() {
            Some(fault) => self.record.answer(self.route.body_answer(fault)),
            None => self.record.answer(answer),
        }
    }

    /// Waits for a guest that gave no usable response head and answers for
    /// it; `no_response` says what was wrong with its response.
    pub(crate) async fn fail(&self, task: GuestTask, no_response: String) -> Response<Body> {
        let finished = task.finished().await;
        self.answer(answer_for(finished, no_response))
    }

    /// Sends the guest's response: head sanitized, the body coalesced into
    /// one write when small and quick, otherwise streamed and guarded so
    /// that a later kill aborts it instead of ending it cleanly.
    pub(crate) async fn respond<B>(
        &self,
        task: GuestTask,
        mut head: http::response::Parts,
        body: B,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BodyError>,
    {
        if let Some(fault) = self.body_flag.fault() {
            return self.record.answer(self.route.body_answer(fault));
        }
        let status = head.status;
        if status.is_informational() {
            let message = format!(
                "the guest's response has the informational status {}, which cannot end a \
                 response",
                status.as_u16()
            );
            return self.answer(HostAnswer::BadGateway(message));
        }
        sanitize_guest_headers(&mut head.headers);
        let verdict = task.verdict();
        match coalesce(head, body, verdict).await {
            Coalesced::Complete(response) | Coalesced::Streaming(response) => {
                self.record.set_status(status);
                response
            }
            Coalesced::Killed => {
                self.fail(task, "the guest's response body failed".into())
                    .await
            }
        }
    }
}

/// What the client is told when the guest gave no response: the outcome
/// that killed it, or — when it completed without a usable response —
/// 502 with `no_response` (and a non-zero exit code, if any).
pub(crate) fn answer_for(finished: Finished, no_response: String) -> HostAnswer {
    match finished {
        Finished::Outcome(OutcomeKind::Exited(0)) => HostAnswer::BadGateway(no_response),
        Finished::Outcome(OutcomeKind::Exited(code)) => {
            HostAnswer::BadGateway(format!("{no_response} (the guest exited with code {code})"))
        }
        Finished::Outcome(kind) => {
            let message = kill_message(&kind);
            HostAnswer::Killed(kind, message)
        }
        Finished::HostError(detail) => HostAnswer::HostError(detail),
        Finished::Overloaded => HostAnswer::Overloaded(
            "the host has no free instance slot for this request; retry later".into(),
        ),
        Finished::Lost => HostAnswer::HostError("the request's task failed".into()),
    }
}

/// The message of an error body for a killed guest.
fn kill_message(kind: &OutcomeKind) -> String {
    match kind {
        OutcomeKind::FuelExhausted => "the request ran out of fuel".into(),
        OutcomeKind::CpuExceeded => "the request used more than its CPU-time limit".into(),
        OutcomeKind::MemoryExceeded => "the request tried to grow its memory past its cap".into(),
        OutcomeKind::DeadlineExceeded => "the request did not finish within its deadline".into(),
        OutcomeKind::Trapped(m) => format!("the guest trapped: {m}"),
        OutcomeKind::Exited(code) => format!("the guest exited with code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_alternates_kills_and_clean_requests_stays_penalized() {
        let standing = Standing::default();
        let killed = Finished::Outcome(OutcomeKind::FuelExhausted);
        let clean = Finished::Outcome(OutcomeKind::Exited(0));
        assert_eq!(standing.priority(), Priority::Normal);
        for _ in 0..10 {
            standing.remember(&killed);
            assert_eq!(standing.priority(), Priority::Background);
            standing.remember(&clean);
            assert_eq!(standing.priority(), Priority::Background);
        }
        // Capped: MAX_STRIKES clean requests restore it, whatever came before.
        for _ in 0..MAX_STRIKES - 1 {
            standing.remember(&clean);
        }
        assert_eq!(standing.priority(), Priority::Normal);
        // A host error changes nothing.
        standing.remember(&Finished::HostError("x".into()));
        assert_eq!(standing.priority(), Priority::Normal);
    }

    #[test]
    fn a_guest_that_completed_without_a_response_is_a_bad_gateway() {
        let answer = answer_for(Finished::Outcome(OutcomeKind::Exited(0)), "no head".into());
        assert_eq!(answer, HostAnswer::BadGateway("no head".into()));
        let answer = answer_for(Finished::Outcome(OutcomeKind::Exited(3)), "no head".into());
        assert_eq!(
            answer,
            HostAnswer::BadGateway("no head (the guest exited with code 3)".into())
        );
    }

    #[test]
    fn a_killed_guest_is_answered_with_its_outcome() {
        for kind in [
            OutcomeKind::FuelExhausted,
            OutcomeKind::MemoryExceeded,
            OutcomeKind::DeadlineExceeded,
            OutcomeKind::Trapped(crate::Trap::new(
                crate::TrapReason::Unreachable,
                "unreachable",
            )),
        ] {
            let answer = answer_for(Finished::Outcome(kind.clone()), "unused".into());
            assert_eq!(answer.outcome(), kind.name());
            assert!(!Finished::Outcome(kind).completed());
        }
        assert_eq!(
            answer_for(Finished::Overloaded, String::new()).status(),
            503
        );
        assert_eq!(answer_for(Finished::Lost, String::new()).status(), 500);
        assert!(Finished::Outcome(OutcomeKind::Exited(1)).completed());
    }
}
