//! The rules in force for the whole installation: the configuration's defaults, overridden by
//! a `ChatPolicy`. Everything that enforces a limit reads the current [`Policy`] at the moment
//! it decides, so a change holds at once on open sockets too.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::error::ApiError;

/// The protocol's default message limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16_384;

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub registration_open: bool,
    pub max_message_bytes: usize,
    pub max_attachment_bytes: u64,
    pub messages_per_second: u32,
    pub burst: u32,
    /// Lowercase.
    pub blocked_words: Vec<String>,
    pub default_retention_days: Option<i64>,
    /// Changes whenever the policy does; connections rebuild their rate limiter on a change.
    pub generation: u64,
}

/// The protocol's defaults.
impl Default for Policy {
    fn default() -> Self {
        Policy {
            registration_open: true,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_attachment_bytes: 10 * 1024 * 1024,
            messages_per_second: 10,
            burst: 20,
            blocked_words: Vec::new(),
            default_retention_days: None,
            generation: 0,
        }
    }
}

impl Policy {
    /// The protocol's defaults with the configuration's flags.
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            max_attachment_bytes: c.max_attachment_bytes,
            messages_per_second: c.messages_per_second,
            burst: c.message_burst,
            ..Policy::default()
        }
    }

    /// Size and blocked words of a message body.
    pub fn check_body(&self, body: &str) -> Result<(), ApiError> {
        if body.len() > self.max_message_bytes {
            return Err(ApiError::TooLarge(format!(
                "body is {} bytes; the limit is {}",
                body.len(),
                self.max_message_bytes
            )));
        }
        if !self.blocked_words.is_empty() {
            let lower = body.to_lowercase();
            let words: Vec<&str> = lower
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            let hit = self.blocked_words.iter().any(|b| {
                if b.contains(char::is_whitespace) {
                    lower.contains(b.as_str())
                } else {
                    words.contains(&b.as_str())
                }
            });
            if hit {
                return Err(ApiError::forbidden(
                    "the message contains a word this installation blocks",
                ));
            }
        }
        Ok(())
    }
}

/// The policy in force, shared by every request and connection.
pub struct Policies {
    base: Policy,
    tx: watch::Sender<Arc<Policy>>,
}

impl Policies {
    pub fn new(base: Policy) -> Policies {
        let (tx, _) = watch::channel(Arc::new(base.clone()));
        Policies { base, tx }
    }

    pub fn current(&self) -> Arc<Policy> {
        self.tx.borrow().clone()
    }

    /// The configuration's defaults, which a `ChatPolicy` overrides.
    pub fn base(&self) -> &Policy {
        &self.base
    }

    /// Puts a policy (or, with `None`, the defaults) in force; its generation moves only if it
    /// differs from the one in force.
    pub fn put(&self, policy: Option<Policy>) {
        let mut next = policy.unwrap_or_else(|| self.base.clone());
        self.tx.send_if_modified(|current| {
            next.generation = current.generation;
            if **current == next {
                return false;
            }
            next.generation = current.generation + 1;
            *current = Arc::new(next.clone());
            tracing::info!(generation = next.generation, "policy applied");
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Policy {
        Policy {
            registration_open: true,
            max_message_bytes: 100,
            max_attachment_bytes: 1000,
            messages_per_second: 10,
            burst: 20,
            blocked_words: vec![],
            default_retention_days: None,
            generation: 0,
        }
    }

    #[test]
    fn blocked_words_match_whole_words_in_any_case() {
        let p = Policy {
            blocked_words: vec!["darn".into(), "bad phrase".into()],
            ..base()
        };
        assert!(p.check_body("oh DARN it").is_err());
        assert!(p.check_body("a Bad Phrase here").is_err());
        assert!(
            p.check_body("darnation is fine").is_ok(),
            "no Scunthorpe problem"
        );
        assert_eq!(
            p.check_body(&"x".repeat(101)).unwrap_err().code(),
            "too_large"
        );
    }

    #[test]
    fn putting_bumps_the_generation_only_on_change() {
        let ps = Policies::new(base());
        let strict = Policy { burst: 5, ..base() };
        ps.put(Some(strict.clone()));
        assert_eq!((ps.current().burst, ps.current().generation), (5, 1));
        ps.put(Some(strict));
        assert_eq!(ps.current().generation, 1);
        ps.put(None);
        assert_eq!((ps.current().burst, ps.current().generation), (20, 2));
    }
}
