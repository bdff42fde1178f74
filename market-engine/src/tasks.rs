//! Supervision of the engine's background tasks (ingest, gate closures and settlement, the
//! chain outbox, automatic rules, the neighbourhood aggregate): a task that panics is logged,
//! counted (`gridshare_task_restarts_total{task}` on `/metrics`) and started again after a
//! pause, so one bad input can never silently stop settlement for the street; a task that
//! returns has finished because the engine is stopping.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::market::ReasonCounts;

/// Pause before a panicked task starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Restarts per task, for `/metrics`.
#[derive(Debug, Default)]
pub struct TaskMetrics {
    /// Restarts by task name.
    pub restarts: ReasonCounts,
}

/// Runs the future `make` returns as task `name`, and again whenever it panics, until it
/// returns or `stop` turns true.
pub fn supervise<F, Fut>(
    name: &'static str,
    metrics: Arc<TaskMetrics>,
    mut stop: watch::Receiver<bool>,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    metrics.restarts.add(name);
                    tracing::error!(target: "engine", task = name, "background task panicked, restarting: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(RESTART_PAUSE) => {}
                        _ = stop.changed() => return,
                    }
                    if *stop.borrow() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_counted() {
        let metrics = Arc::new(TaskMetrics::default());
        let (_stop, stopped) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let task = supervise("flaky", metrics.clone(), stopped, move || {
            let runs = counted.clone();
            async move {
                // Panics on its first run, finishes on its second.
                assert!(runs.fetch_add(1, Ordering::SeqCst) > 0, "first run fails");
            }
        });
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("restarted and finished")
            .expect("supervisor itself never panics");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(metrics.restarts.snapshot(), vec![("flaky", 1)]);
    }
}
