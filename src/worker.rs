//! The model thread: it builds and owns every libtorch / rust-bert object, and runs jobs sent to
//! it over a channel. Async callers await a oneshot; the CLI may block. Model work therefore
//! never runs on a tokio worker thread, and models that are not `Send` never need to be.

use std::sync::mpsc;

use anyhow::Context;

type Job<M> = Box<dyn FnOnce(&mut M) + Send>;

/// A handle to the thread owning `M`. Cloning it shares the same thread.
pub struct ModelWorker<M> {
    jobs: mpsc::Sender<Job<M>>,
}

impl<M> Clone for ModelWorker<M> {
    fn clone(&self) -> Self {
        ModelWorker { jobs: self.jobs.clone() }
    }
}

/// The name of the model thread, so logs and tests can tell where work ran.
pub const THREAD_NAME: &str = "lookalike-models";

impl<M: 'static> ModelWorker<M> {
    /// Starts the thread and builds the models on it; returns once they are loaded, or with the
    /// error that stopped them loading.
    pub fn spawn(build: impl FnOnce() -> anyhow::Result<M> + Send + 'static) -> anyhow::Result<ModelWorker<M>> {
        let (jobs, inbox) = mpsc::channel::<Job<M>>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                let mut models = match build() {
                    Ok(models) => {
                        let _ = ready_tx.send(Ok(()));
                        models
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                // The thread ends when every handle is dropped. A panicking job fails only its
                // own caller (its answer sender is dropped); the models stay loaded for the next.
                while let Ok(job) = inbox.recv() {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut models)));
                    if outcome.is_err() {
                        tracing::error!("a model job panicked; the model thread carries on");
                    }
                }
            })
            .context("cannot start the model thread")?;
        ready_rx.recv().context("the model thread stopped while loading")??;
        Ok(ModelWorker { jobs })
    }

    /// Runs `job` on the model thread and awaits its answer, in the caller's tracing span.
    pub async fn run<R: Send + 'static>(&self, job: impl FnOnce(&mut M) -> R + Send + 'static) -> anyhow::Result<R> {
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        self.jobs
            .send(Box::new(move |models: &mut M| {
                let _entered = span.enter();
                let _ = answer_tx.send(job(models));
            }))
            .map_err(|_| anyhow::anyhow!("the model thread has stopped"))?;
        answer_rx.await.map_err(|_| anyhow::anyhow!("the model thread stopped before answering (the job panicked)"))
    }

    /// Queues `job` on the model thread without waiting for it; it answers by its own means.
    pub fn submit(&self, job: impl FnOnce(&mut M) + Send + 'static) -> anyhow::Result<()> {
        let span = tracing::Span::current();
        self.jobs
            .send(Box::new(move |models: &mut M| {
                let _entered = span.enter();
                job(models)
            }))
            .map_err(|_| anyhow::anyhow!("the model thread has stopped"))
    }

    /// Runs `job` on the model thread and blocks until it answers; for the CLI, never async code.
    pub fn run_blocking<R: Send + 'static>(&self, job: impl FnOnce(&mut M) -> R + Send + 'static) -> anyhow::Result<R> {
        let (answer_tx, answer_rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move |models: &mut M| {
                let _ = answer_tx.send(job(models));
            }))
            .map_err(|_| anyhow::anyhow!("the model thread has stopped"))?;
        answer_rx.recv().map_err(|_| anyhow::anyhow!("the model thread stopped before answering (the job panicked)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_on_the_model_thread_in_order() {
        let worker = ModelWorker::spawn(|| Ok(Vec::<u32>::new())).unwrap();
        for n in 0..5 {
            let name = worker.run(move |seen: &mut Vec<u32>| {
                seen.push(n);
                std::thread::current().name().map(str::to_string)
            });
            assert_eq!(name.await.unwrap().as_deref(), Some(THREAD_NAME));
        }
        assert_eq!(worker.run(|seen: &mut Vec<u32>| seen.clone()).await.unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_failed_load_is_reported_and_a_panicking_job_is_an_error() {
        let failed = ModelWorker::<()>::spawn(|| anyhow::bail!("weights missing"));
        assert!(failed.err().unwrap().to_string().contains("weights missing"));

        let worker = ModelWorker::spawn(|| Ok(())).unwrap();
        let answer: anyhow::Result<()> = worker.run_blocking(|_| panic!("model bug"));
        assert!(answer.unwrap_err().to_string().contains("stopped before answering"));
        assert_eq!(worker.run_blocking(|_| 42).unwrap(), 42, "the thread survives a panicking job");
    }
}
