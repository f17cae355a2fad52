//! One process-wide "time to exit" signal, triggered by the host's
//! Shutdown call, by the host going away, or by SIGTERM.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    sender: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            sender: watch::channel(false).0,
        }
    }

    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Resolves once [`Shutdown::trigger`] has been called, even if it was
    /// called before this future was created.
    pub async fn triggered(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives in self, so this cannot fail while we wait.
        let _ = receiver.wait_for(|triggered| *triggered).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_current_and_later_waiters() {
        let shutdown = Shutdown::new();
        let early = tokio::spawn({
            let s = shutdown.clone();
            async move { s.triggered().await }
        });
        tokio::task::yield_now().await;
        shutdown.trigger();
        early.await.unwrap();
        shutdown.triggered().await;
    }
}
