//! Resynchronising state over REST after a gap.
//!
//! Channels ask the one resync task for their users; requests that arrive together are served
//! together, by whichever costs fewer requests under the rate limit: bulk presence, 50 users a
//! call, or the paged listing of every watched user with `expand=presence` (500 a page). At
//! start every channel connects at once and one paged pass serves them all; a single channel
//! that reconnects later is served by bulk calls.

use std::collections::HashSet;
use std::sync::Arc;

use genesys_auth::GenesysClient;
use presence_frame::{Guid, PresenceEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::api::{bulk_presence, members_uri, users_uri, walk_pages};
use crate::config::UserSelection;
use crate::decode::Decoder;
use crate::sink::PresenceSink;
use crate::stats::{add, bump};

/// A request to resync some users; answered when their state has been fed to the sink.
pub(crate) struct ResyncRequest {
    pub(crate) users: Arc<[Guid]>,
    pub(crate) done: oneshot::Sender<ResyncOutcome>,
}

/// The answer to a [`ResyncRequest`]: the error is shared by every request served together
/// (and already logged by the resync task).
pub(crate) type ResyncOutcome = Result<(), Arc<genesys_auth::Error>>;

/// Everything the resync task needs.
pub(crate) struct Resyncer {
    pub(crate) client: GenesysClient,
    pub(crate) selection: UserSelection,
    pub(crate) page_size: usize,
    /// Users in a full listing (the last discovery's count, owned or not): what a paged
    /// pass costs.
    pub(crate) listed: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) decoder: Arc<Decoder>,
    pub(crate) sink: Arc<dyn PresenceSink>,
    pub(crate) batch_size: usize,
}

/// How long to wait for more requests before serving the first.
const GATHER: Duration = Duration::from_millis(50);

impl Resyncer {
    /// Serves requests until cancelled or every sender is gone.
    pub(crate) async fn run(
        self,
        mut requests: mpsc::Receiver<ResyncRequest>,
        cancel: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                r = requests.recv() => match r { Some(r) => r, None => return },
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(GATHER) => {}
            }
            let mut batch = vec![first];
            while let Ok(more) = requests.try_recv() {
                batch.push(more);
            }
            let mut wanted: Vec<Guid> = Vec::new();
            let mut seen = HashSet::new();
            for request in &batch {
                wanted.extend(request.users.iter().filter(|u| seen.insert(**u)));
            }
            let started = Instant::now();
            let result: ResyncOutcome = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.resync(&wanted) => r.map_err(Arc::new),
            };
            match &result {
                Ok(()) => {
                    self.decoder.stats.resync_done(started.elapsed());
                    log::info!(
                        "resynced {} users in {:.1?}",
                        wanted.len(),
                        started.elapsed()
                    );
                }
                Err(e) => {
                    bump(&self.decoder.stats.resync_failures);
                    log::warn!("resync of {} users failed: {e}", wanted.len());
                }
            }
            for request in batch {
                let _ = request.done.send(result.clone());
            }
        }
    }

    async fn resync(&self, users: &[Guid]) -> genesys_auth::Result<()> {
        let bulk_calls = users.len().div_ceil(50);
        let listed = self.listed.load(std::sync::atomic::Ordering::Relaxed);
        let page_calls = listed.div_ceil(self.page_size).max(self.listings());
        if bulk_calls <= page_calls {
            return self.bulk(users).await;
        }
        // One paged pass; users whose presence the expand left out get a bulk call.
        let mut missing: Vec<Guid> = Vec::new();
        let mut events: Vec<PresenceEvent> = Vec::with_capacity(self.batch_size);
        let uris: Vec<String> = match &self.selection {
            UserSelection::AllActive => vec![users_uri(self.page_size, true, false)],
            UserSelection::Groups(groups) => groups
                .iter()
                .map(|g| members_uri(*g, self.page_size, true))
                .collect(),
        };
        let wanted: HashSet<Guid> = users.iter().copied().collect();
        for uri in uris {
            let bad = walk_pages(&self.client, uri, |listed| {
                if !wanted.contains(&listed.user) {
                    return;
                }
                match listed.presence {
                    Some(event) => {
                        bump(&self.decoder.stats.resync_events);
                        events.push(event);
                        if events.len() >= self.batch_size {
                            self.flush(&mut events);
                        }
                    }
                    None => missing.push(listed.user),
                }
            })
            .await?;
            if bad > 0 {
                log::warn!("resync: {bad} users came back with a presence that could not be read");
            }
        }
        self.flush(&mut events);
        if !missing.is_empty() {
            log::debug!(
                "resync: {} users had no presence in the listing; asking in bulk",
                missing.len()
            );
            self.bulk(&missing).await?;
        }
        Ok(())
    }

    async fn bulk(&self, users: &[Guid]) -> genesys_auth::Result<()> {
        let mut events: Vec<PresenceEvent> = Vec::with_capacity(self.batch_size);
        for chunk in users.chunks(50) {
            let (found, bad) = bulk_presence(&self.client, chunk).await?;
            if bad > 0 {
                log::warn!("resync: {bad} bulk presence items could not be read");
            }
            add(&self.decoder.stats.resync_events, found.len() as u64);
            events.extend(found);
            self.flush(&mut events);
        }
        Ok(())
    }

    fn listings(&self) -> usize {
        match &self.selection {
            UserSelection::AllActive => 1,
            UserSelection::Groups(groups) => groups.len().max(1),
        }
    }

    fn flush(&self, events: &mut Vec<PresenceEvent>) {
        self.decoder.deliver(&*self.sink, events);
    }
}
