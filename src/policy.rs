//! The rules in force for the whole installation: the configuration's defaults, overridden by
//! a `ChatPolicy`. Everything that enforces a limit reads the current [`Policy`] at the moment
//! it decides, so a change holds at once on open sockets too.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::error::ApiError;
use crate::operator::resources::{ChatPolicySpec, Registration};

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

    /// The configuration's defaults with a `ChatPolicy` on top; an invalid spec is an error
    /// that names the field.
    pub fn with_spec(base: &Policy, spec: &ChatPolicySpec) -> Result<Policy, String> {
        let positive = |v: Option<u64>, field: &str| match v {
            Some(0) => Err(format!("spec.{field} must be at least 1")),
            _ => Ok(()),
        };
        positive(spec.max_message_bytes, "maxMessageBytes")?;
        positive(spec.max_attachment_bytes, "maxAttachmentBytes")?;
        positive(spec.messages_per_second.map(u64::from), "messagesPerSecond")?;
        positive(spec.burst.map(u64::from), "burst")?;
        if spec.max_message_bytes.is_some_and(|m| m > 1_048_576) {
            return Err("spec.maxMessageBytes must be at most 1048576".into());
        }
        if spec.default_retention_days.is_some_and(|d| d < 1) {
            return Err("spec.defaultRetentionDays must be at least 1".into());
        }
        if spec.blocked_words.iter().any(|w| w.trim().is_empty()) {
            return Err("spec.blockedWords must not contain empty words".into());
        }
        Ok(Policy {
            registration_open: spec.registration.unwrap_or_default() == Registration::Open,
            max_message_bytes: spec
                .max_message_bytes
                .map_or(base.max_message_bytes, |m| m as usize),
            max_attachment_bytes: spec
                .max_attachment_bytes
                .unwrap_or(base.max_attachment_bytes),
            messages_per_second: spec.messages_per_second.unwrap_or(base.messages_per_second),
            burst: spec.burst.unwrap_or(base.burst),
            blocked_words: spec
                .blocked_words
                .iter()
                .map(|w| w.trim().to_lowercase())
                .collect(),
            default_retention_days: spec.default_retention_days,
            generation: 0,
        })
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

    /// Puts a `ChatPolicy` (or, with `None`, the defaults) in force. On an invalid spec the
    /// policy in force stays and the error says why.
    pub fn apply(&self, spec: Option<&ChatPolicySpec>) -> Result<(), String> {
        let mut next = match spec {
            Some(s) => Policy::with_spec(&self.base, s)?,
            None => self.base.clone(),
        };
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
        Ok(())
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
    fn a_spec_overrides_only_what_it_names() {
        let spec = ChatPolicySpec {
            max_message_bytes: Some(10),
            registration: Some(Registration::Closed),
            ..Default::default()
        };
        let p = Policy::with_spec(&base(), &spec).unwrap();
        assert_eq!(
            (p.max_message_bytes, p.registration_open, p.burst),
            (10, false, 20)
        );
        let bad = ChatPolicySpec {
            burst: Some(0),
            ..Default::default()
        };
        assert!(
            Policy::with_spec(&base(), &bad)
                .unwrap_err()
                .contains("burst")
        );
    }

    #[test]
    fn blocked_words_match_whole_words_in_any_case() {
        let spec = ChatPolicySpec {
            blocked_words: vec!["Darn".into(), "bad phrase".into()],
            ..Default::default()
        };
        let p = Policy::with_spec(&base(), &spec).unwrap();
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
    fn applying_bumps_the_generation_only_on_change() {
        let ps = Policies::new(base());
        let spec = ChatPolicySpec {
            burst: Some(5),
            ..Default::default()
        };
        ps.apply(Some(&spec)).unwrap();
        assert_eq!((ps.current().burst, ps.current().generation), (5, 1));
        ps.apply(Some(&spec)).unwrap();
        assert_eq!(ps.current().generation, 1);
        assert!(
            ps.apply(Some(&ChatPolicySpec {
                burst: Some(0),
                ..Default::default()
            }))
            .is_err()
        );
        assert_eq!(ps.current().burst, 5, "the last good policy stays");
        ps.apply(None).unwrap();
        assert_eq!((ps.current().burst, ps.current().generation), (20, 2));
    }
}
