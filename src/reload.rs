//! Live reload: a new config is applied to the running server without dropping connections.
//! Upstreams (health carried over by name), health settings (the probers' and the
//! subscription feed's timings), access rules, the deny list, TLS material and balance
//! watches change in place; listen addresses and the other `[server]` settings need a
//! restart, which the outcome says.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::server::tls::TlsError;
use crate::state::Shared;
use crate::{policy, server, upstream, watch};

/// Why a reload was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server has stopped (or never ran): no one applies configs.
    #[error("ethgate is not running")]
    NotRunning,
    /// The server stopped while the reload was queued or being applied.
    #[error("ethgate stopped during the reload")]
    Stopped,
    /// The new TLS certificate, key or client CA could not be loaded (names the key and file).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What a reload changed, and what it could not change without a restart: one line each.
pub type ReloadNotes = Vec<String>;

/// A config to apply and where to say how it went.
pub struct ReloadRequest {
    /// The validated new config.
    pub config: Config,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ReloadNotes, ReloadError>>,
}

/// Applies new configs to a running server.
#[derive(Clone)]
pub struct Reloader {
    requests: mpsc::Sender<ReloadRequest>,
}

impl Reloader {
    pub(crate) fn channel() -> (Reloader, mpsc::Receiver<ReloadRequest>) {
        let (requests, receiver) = mpsc::channel(4);
        (Reloader { requests }, receiver)
    }

    /// Applies `config`. `Ok` lists what changed and what needs a restart; `Err` says why it
    /// was refused, in which case nothing changed.
    pub async fn reload(&self, config: Config) -> Result<ReloadNotes, ReloadError> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(ReloadRequest { config, reply })
            .await
            .map_err(|_| ReloadError::NotRunning)?;
        outcome.await.map_err(|_| ReloadError::Stopped)?
    }
}

/// Applies reload requests one at a time until `stop`.
pub(crate) async fn run(
    state: Arc<Shared>,
    mut current: Config,
    mut requests: mpsc::Receiver<ReloadRequest>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let ReloadRequest { config, reply } = tokio::select! {
            _ = stop.cancelled() => return,
            request = requests.recv() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let outcome = apply(&state, &current, &config, &tracker, &stop);
        match &outcome {
            Ok(notes) => {
                tracing::info!(changes = %notes.join("; "), "config reloaded");
                current = config;
            }
            Err(error) => {
                tracing::error!(%error, "config reload refused; the previous config stays")
            }
        }
        let _ = reply.send(outcome);
    }
}

fn apply(
    state: &Shared,
    old: &Config,
    new: &Config,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<ReloadNotes, ReloadError> {
    let mut notes = needs_restart(old, new);
    // TLS first: it is the only part that can still fail, and a failure must change nothing.
    reload_tls(state, new, &mut notes)?;
    reload_upstreams(state, old, new, tracker, stop, &mut notes);
    reload_feed_timings(state, new, &mut notes);
    if old.access != new.access {
        state
            .access
            .store(Arc::new(server::access::Access::new(&new.access)));
        state
            .frontend
            .deny
            .store(Arc::new(policy::DenyList::new(&new.access.deny_methods)));
        crate::log_access(new);
        notes.push("access rules and deny list applied".into());
    }
    if old.watch != new.watch {
        state
            .balances
            .store(Arc::new(watch::Balances::new(&new.watch)));
        state.restart_watchers(tracker, stop);
        notes.push("balance watches applied".into());
    }
    Ok(notes)
}

/// The client port's certificate and key, re-read from their files (which may have been
/// renewed under the same paths); adding or removing TLS needs a restart.
fn reload_tls(state: &Shared, new: &Config, notes: &mut ReloadNotes) -> Result<(), ReloadError> {
    match (&state.tls, &new.server.tls) {
        (Some(tls), Some(config)) => {
            tls.reload(config)?;
            notes.push("TLS certificate and key reloaded".into());
        }
        (None, None) => {}
        _ => notes.push("server.tls added or removed: restart to apply".into()),
    }
    Ok(())
}

/// A new upstream set when the upstreams, health settings or chain id changed, or when an
/// upstream's TLS files may have.
fn reload_upstreams(
    state: &Shared,
    old: &Config,
    new: &Config,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    notes: &mut ReloadNotes,
) {
    // An upstream's TLS files may have changed on disk under the same path (a renewed client
    // certificate, a rotated CA): rebuilding the set re-reads them. Health carries over.
    let tls_files = new
        .upstreams
        .iter()
        .any(|u| u.uses_tls() && (u.tls.ca.is_some() || u.tls.cert.is_some()));
    if old.upstreams != new.upstreams
        || old.health != new.health
        || old.chain_id != new.chain_id
        || tls_files
    {
        let upstreams = Arc::new(upstream::Upstreams::new(new, state.metrics.clone()));
        upstreams.carry_over(&state.router.upstreams());
        state.router.replace_upstreams(upstreams);
        state.restart_probers(tracker, stop);
        notes.push(format!(
            "upstreams and health settings applied ({} upstreams{})",
            new.upstreams.len(),
            if tls_files { "; TLS files re-read" } else { "" }
        ));
    }
}

/// The subscription feed's timings follow `[health]`: the followed source is retimed in
/// place (no resubscribe), a new source is opened with them. `server.request_timeout`, which
/// caps two of them, stays as started (a `[server]` key).
fn reload_feed_timings(state: &Shared, new: &Config, notes: &mut ReloadNotes) {
    // `apply` compares the derived timings: a `[health]` change that moves none of them (a
    // threshold) sends nothing.
    if let Some(t) = state.feed_timings.apply(&new.health) {
        notes.push(format!(
            "subscription feed retimed (source pinged after {:?} of silence, given up after \
             {:?}, polled every {:?}, checked every {:?})",
            t.ping_after, t.dead_after, t.poll_every, t.check_every
        ));
    }
}

/// Settings read once at start-up: changing them needs a restart, which is said, not ignored.
fn needs_restart(old: &Config, new: &Config) -> ReloadNotes {
    let mut notes = Vec::new();
    let (mut old_server, mut new_server) = (old.server.clone(), new.server.clone());
    old_server.tls = None;
    new_server.tls = None;
    if old_server != new_server {
        notes.push("[server] settings changed: restart to apply them".into());
    }
    if old.admin != new.admin {
        notes.push("admin.listen changed: restart to apply it".into());
    }
    if old.log != new.log {
        notes.push("[log] changed: restart (or use --log-level) to apply it".into());
    }
    notes
}
