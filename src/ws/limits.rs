//! What one connection may send, and when it is abusing that. Plain data over a clock (no
//! I/O), so the rules are unit-tested with a clock the test moves.
//!
//! Two budgets: every client frame counts against the connection's frame budget (server
//! settings), and messages also against the policy's message budget. A refused frame is
//! answered `rate_limited` with `retry_after_ms`. Only refusals of frames that arrive *before*
//! the time the previous refusal asked the client to wait count as abuse; a client that obeys
//! every hint is never closed, however many of its frames are refused.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::error::ApiError;
use crate::policy::Policy;

/// Refusals that ignored the hint, within [`ABUSE_WINDOW`], that close the socket with 4008.
pub const ABUSE_LIMIT: usize = 30;
pub const ABUSE_WINDOW: Duration = Duration::from_secs(10);

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

fn quota(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second.max(1)).expect("non-zero"))
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("non-zero"))
}

/// What the connection does with a frame.
#[derive(Debug)]
pub enum Verdict {
    /// Handle it.
    Allowed,
    /// Answer `rate_limited` (the error carries `retry_after_ms`).
    Refused(ApiError),
    /// Close with 4008: the client keeps sending before the time it was told to wait.
    Abusive,
}

/// Which budget a frame draws on besides the frame budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Message,
    Other,
}

/// Held by every connection for its whole life, so kept small: the message budget is made
/// when the connection first sends a message (most sockets only read), and the clock is the
/// frame budget's own.
pub struct Limits<C: Clock = DefaultClock> {
    frames: Limiter<C>,
    messages: Option<Box<Limiter<C>>>,
    /// The policy generation `messages` was built for.
    policy_generation: u64,
    /// Until when the last refusal asked the client to wait.
    hinted_until: Option<C::Instant>,
    /// When recent refusals that ignored a hint happened.
    ignored: VecDeque<C::Instant>,
}

// Every open socket holds one: within a few words of the one rate limiter a connection had
// before every frame was counted (112 bytes with its abuse record).
const _: () = assert!(std::mem::size_of::<Limits>() <= 136);

impl Limits<DefaultClock> {
    pub fn new(frames_per_second: u32, frames_burst: u32, policy: &Policy) -> Self {
        Self::with_clock(
            frames_per_second,
            frames_burst,
            policy,
            DefaultClock::default(),
        )
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(
        frames_per_second: u32,
        frames_burst: u32,
        policy: &Policy,
        clock: C,
    ) -> Self {
        Limits {
            frames: RateLimiter::direct_with_clock(quota(frames_per_second, frames_burst), clock),
            messages: None,
            policy_generation: policy.generation,
            hinted_until: None,
            ignored: VecDeque::new(),
        }
    }

    /// Takes a frame from the budgets (a message from both). `policy` is the one in force: a
    /// new message limit holds on open sockets too.
    pub fn check(&mut self, kind: FrameKind, policy: &Policy) -> Verdict {
        if policy.generation != self.policy_generation {
            // A new limit holds from now on, with a fresh budget.
            self.messages = None;
            self.policy_generation = policy.generation;
        }
        let now = self.frames.clock().now();
        let refused = match self.frames.check() {
            Err(not_until) => Some((not_until.wait_time_from(now), "too many frames; slow down")),
            Ok(()) if kind == FrameKind::Message => {
                let clock = self.frames.clock().clone();
                // Built from the policy in force, whose generation this budget follows.
                let messages = self.messages.get_or_insert_with(|| {
                    Box::new(RateLimiter::direct_with_clock(
                        quota(policy.messages_per_second, policy.burst),
                        clock,
                    ))
                });
                messages
                    .check()
                    .err()
                    .map(|n| (n.wait_time_from(now), "too many messages; slow down"))
            }
            Ok(()) => None,
        };
        let Some((wait, message)) = refused else {
            return Verdict::Allowed;
        };
        if self.hinted_until.is_some_and(|until| now < until) {
            self.ignored.push_back(now);
            let window = ABUSE_WINDOW.into();
            while self
                .ignored
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                self.ignored.pop_front();
            }
            if self.ignored.len() >= ABUSE_LIMIT {
                return Verdict::Abusive;
            }
        }
        let wait = wait.max(Duration::from_millis(1));
        self.hinted_until = Some(now + wait.into());
        Verdict::Refused(ApiError::RateLimited {
            message: message.into(),
            retry_after_ms: wait.as_millis().max(1) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn policy(per_second: u32, burst: u32) -> Policy {
        Policy {
            messages_per_second: per_second,
            burst,
            ..Policy::default()
        }
    }

    fn retry_after(v: Verdict) -> Duration {
        match v {
            Verdict::Refused(e) => Duration::from_millis(e.retry_after_ms().expect("a hint")),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_client_that_waits_as_hinted_is_never_closed() {
        let clock = FakeRelativeClock::default();
        let p = policy(10, 20);
        let mut limits = Limits::with_clock(1000, 1000, &p, clock.clone());
        for _ in 0..20 {
            assert!(matches!(
                limits.check(FrameKind::Message, &p),
                Verdict::Allowed
            ));
        }
        // Far more refusals than ABUSE_LIMIT, each obeyed: wait, resend, send the next at once.
        for _ in 0..(ABUSE_LIMIT * 4) {
            let wait = retry_after(limits.check(FrameKind::Message, &p));
            assert!(wait <= Duration::from_millis(100), "{wait:?}");
            clock.advance(wait);
            assert!(matches!(
                limits.check(FrameKind::Message, &p),
                Verdict::Allowed
            ));
        }
    }

    #[test]
    fn a_client_that_ignores_the_hint_is_abusive() {
        let clock = FakeRelativeClock::default();
        let p = policy(10, 20);
        let mut limits = Limits::with_clock(1000, 1000, &p, clock.clone());
        let mut verdicts = (0..100).map(|_| {
            clock.advance(Duration::from_millis(1));
            limits.check(FrameKind::Message, &p)
        });
        let first_refusal = verdicts
            .position(|v| matches!(v, Verdict::Refused(_)))
            .unwrap();
        assert_eq!(first_refusal, 20);
        let abusive = verdicts
            .position(|v| matches!(v, Verdict::Abusive))
            .expect("closed");
        // The first refusal set the hint; the next ABUSE_LIMIT ignore it.
        assert_eq!(abusive, ABUSE_LIMIT - 1);
    }

    #[test]
    fn every_frame_counts_against_the_frame_budget() {
        let clock = FakeRelativeClock::default();
        let p = policy(10, 20);
        let mut limits = Limits::with_clock(5, 10, &p, clock.clone());
        for _ in 0..10 {
            assert!(matches!(
                limits.check(FrameKind::Other, &p),
                Verdict::Allowed
            ));
        }
        let wait = retry_after(limits.check(FrameKind::Other, &p));
        assert_eq!(wait, Duration::from_millis(200));
        // Messages draw on the frame budget too.
        assert!(matches!(
            limits.check(FrameKind::Message, &p),
            Verdict::Refused(_)
        ));
        clock.advance(Duration::from_millis(400));
        assert!(matches!(
            limits.check(FrameKind::Other, &p),
            Verdict::Allowed
        ));
    }

    #[test]
    fn a_new_policy_holds_on_open_sockets() {
        let clock = FakeRelativeClock::default();
        let mut limits = Limits::with_clock(1000, 1000, &policy(10, 20), clock);
        let strict = Policy {
            generation: 7,
            ..policy(1, 1)
        };
        assert!(matches!(
            limits.check(FrameKind::Message, &strict),
            Verdict::Allowed
        ));
        assert!(matches!(
            limits.check(FrameKind::Message, &strict),
            Verdict::Refused(_)
        ));
    }
}
