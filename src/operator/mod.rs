//! Operator-style configuration: `ChatRoom` and `ChatPolicy` resources ([`resources`]) made
//! real by one reconcile function ([`reconcile`]), fed by YAML files in `--config-dir`
//! ([`config_dir`]). Policy itself lives in `crate::policy`; this module only decides which
//! policy is in force. Also the retention job.

pub mod config_dir;
pub mod controller;
#[cfg(test)]
mod fixtures;
pub mod reconcile;
pub mod resources;

use std::time::Duration;

use crate::policy::Policies;
use crate::state::AppState;
use resources::ChatPolicySpec;

/// Puts the installation's `ChatPolicy` (or, with none, the configuration's defaults) in force.
/// On an invalid spec the policy in force stays and the error says why.
pub fn apply_policy(policies: &Policies, spec: Option<&ChatPolicySpec>) -> Result<(), String> {
    let policy = spec.map(|s| s.policy(policies.base())).transpose()?;
    policies.put(policy);
    Ok(())
}

/// Deletes messages past their room's retention, or the policy's default, every `interval`,
/// on the leader only.
pub async fn retention(state: AppState, interval: Duration) {
    loop {
        if !state.leader.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(interval).await;
            continue;
        }
        let default_days = state.policies.current().default_retention_days;
        match state
            .store
            .expire_messages(crate::now_ms(), default_days)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "retention: messages deleted"),
            Err(e) => tracing::warn!(error = %e, "retention job failed; retrying next round"),
        }
        tokio::time::sleep(interval).await;
    }
}
