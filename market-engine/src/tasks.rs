//! Supervision of the engine's background tasks (ingest, gate closures and settlement, the
//! chain outbox, automatic rules, the neighbourhood aggregate): a task that panics is logged,
//! counted (`gridshare_task_restarts_total{task}` on `/metrics`) and started again after a
//! pause that doubles with each panic in a row (1 s up to a minute), so one bad input can never
//! silently stop settlement for the street. A task that panics [`MAX_PANICS_IN_A_ROW`] times
//! without a stable run in between is given up: [`TaskMetrics::gave_up`] names it, and the
//! binary exits non-zero so that its service manager (systemd's `Restart=on-failure`) starts
//! the whole engine afresh. A task that returns has finished because the engine is stopping.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::market::ReasonCounts;

/// How restarts back off and when supervision gives up.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Pause after the first panic; doubled after each further panic in a row.
    pub first_pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
    /// A run this long resets the count of panics in a row.
    pub stable_run: Duration,
    /// Panics in a row after which the task is given up.
    pub max_panics_in_a_row: u32,
}

/// Panics in a row after which the engine's supervision gives a task up.
pub const MAX_PANICS_IN_A_ROW: u32 = 8;

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            first_pause: Duration::from_secs(1),
            max_pause: Duration::from_secs(60),
            stable_run: Duration::from_secs(300),
            max_panics_in_a_row: MAX_PANICS_IN_A_ROW,
        }
    }
}

/// Restarts per task, for `/metrics`, and the task given up, if any.
#[derive(Debug)]
pub struct TaskMetrics {
    /// Restarts by task name.
    pub restarts: ReasonCounts,
    /// The first task that kept panicking and was given up.
    gave_up: watch::Sender<Option<&'static str>>,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        Self {
            restarts: ReasonCounts::default(),
            gave_up: watch::channel(None).0,
        }
    }
}

impl TaskMetrics {
    /// Waits until a task is given up, and names it.
    pub async fn gave_up(&self) -> &'static str {
        let mut rx = self.gave_up.subscribe();
        let given_up = rx.wait_for(Option::is_some).await.map(|v| *v);
        // The sender lives as long as `self`, so the wait ends only with a value.
        given_up.ok().flatten().unwrap_or("unknown")
    }

    /// The task given up, if any.
    pub fn given_up(&self) -> Option<&'static str> {
        *self.gave_up.borrow()
    }
}

/// Runs the future `make` returns as task `name`, and again whenever it panics, until it
/// returns or `stop` turns true, with the engine's [`RestartPolicy`].
pub fn supervise<F, Fut>(
    name: &'static str,
    metrics: Arc<TaskMetrics>,
    stop: watch::Receiver<bool>,
    make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    supervise_with(RestartPolicy::default(), name, metrics, stop, make)
}

/// [`supervise`] with another policy.
pub fn supervise_with<F, Fut>(
    policy: RestartPolicy,
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
        let mut in_a_row = 0u32;
        let mut pause = policy.first_pause;
        loop {
            let started = tokio::time::Instant::now();
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    metrics.restarts.add(name);
                    if started.elapsed() >= policy.stable_run {
                        in_a_row = 0;
                        pause = policy.first_pause;
                    }
                    in_a_row += 1;
                    if in_a_row >= policy.max_panics_in_a_row {
                        tracing::error!(target: "engine", task = name, "background task panicked {in_a_row} times in a row, giving up: {e}");
                        metrics.gave_up.send_if_modified(|v| {
                            let first = v.is_none();
                            if first {
                                *v = Some(name);
                            }
                            first
                        });
                        return;
                    }
                    tracing::error!(target: "engine", task = name, pause_ms = pause.as_millis(), "background task panicked, restarting: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => return,
                    }
                    pause = (pause * 2).min(policy.max_pause);
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
        assert_eq!(metrics.given_up(), None);
    }

    /// Regression (issue 11, item 8): a task that panics every time was restarted every second
    /// for ever, and nothing outside the process learnt of it. Now it is given up after the
    /// policy's panics in a row, with the pauses doubling, and named for the binary to exit on.
    #[tokio::test]
    async fn a_task_that_keeps_panicking_is_given_up_and_named() {
        let metrics = Arc::new(TaskMetrics::default());
        let (_stop, stopped) = watch::channel(false);
        let policy = RestartPolicy {
            first_pause: Duration::from_millis(5),
            max_pause: Duration::from_millis(20),
            stable_run: Duration::from_secs(60),
            max_panics_in_a_row: 4,
        };
        let started = std::time::Instant::now();
        let task = supervise_with(policy, "doomed", metrics.clone(), stopped, || async {
            panic!("always");
        });
        let named = tokio::time::timeout(Duration::from_secs(10), metrics.gave_up())
            .await
            .expect("given up");
        assert_eq!(named, "doomed");
        task.await.expect("the supervisor ends without panicking");
        assert_eq!(metrics.restarts.snapshot(), vec![("doomed", 4)]);
        // Pauses of 5, 10 and 20 ms between the four runs.
        assert!(started.elapsed() >= Duration::from_millis(35));
    }
}
