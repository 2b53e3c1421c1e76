//! Keeping a running service current while queries go on: re-indexing the catalogue, editing it
//! one item at a time, and swapping in heads trained since the service started.
//!
//! New heads: a re-index first looks at the heads folder; when its files changed since they
//! were loaded, the new ensemble is loaded on the model thread beside the old one. If the index's
//! vectors depend on the heads (`index.embedding` "combined" or "head"), the catalogue is
//! embedded again with the new ensemble while the old one goes on answering queries from the old
//! generation: each query goes through the ensemble whose key matches the generation it
//! searches, so none mixes the two. Once the new generation is saved the old ensemble is dropped;
//! if the re-index fails, the new one is. With "pooled" vectors the new heads replace the old at
//! once (only the vote changes) and nothing is embedded again.

use super::*;
use crate::audit::{Action, AuditLog, Who};
use crate::catalogue::{self, Metadata};
use crate::config::CatalogueConfig;
use crate::feed::ImportOptions;
use crate::index::whiten::WhiteningSettings;
use crate::index::ReindexGuard;

/// Keeping a running service current: one re-index, catalogue edit or swap of heads at a time
/// in this process (the backends lock across processes), on the model thread the query path
/// shares.
pub struct Upkeep {
    models: Arc<ModelHandle>,
    backend: Arc<dyn Backend>,
    job: JobSettings,
    /// Where new heads come from at a re-index; none for ensembles built in code (the bench).
    heads: Option<HeadsSource>,
    audit: AuditLog,
    /// Held by the re-index, edit or swap running in this process.
    running: Mutex<()>,
    /// Set by [`interrupt_reindex`](Self::interrupt_reindex): a re-index stops after its chunk.
    stop: std::sync::atomic::AtomicBool,
}

/// What a re-index job is made of: the catalogue, where an interrupted one keeps its vectors,
/// what an image may cost, and how many images go to the model thread per job.
struct JobSettings {
    catalogue: CatalogueConfig,
    index_dir: PathBuf,
    limits: ImageLimits,
    /// Images per re-index job: the models' forward batch on their device.
    chunk: usize,
    whitening: Option<WhiteningSettings>,
    augmentation: usize,
}

/// One catalogue edit.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Store a photo under a category (named by its content) with its metadata row.
    Add { photo: Vec<u8>, category: String, metadata: Box<Metadata> },
    /// Remove an item by id (`category/file`), file name or file stem.
    Remove { item: String },
}

/// How far an import has come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ImportStage {
    /// Pictures downloaded (or found from an interrupted import), of those the catalogue lacks.
    Download { done: usize, total: usize },
    /// The re-index after it.
    Index(Progress),
}

/// What an import did: the import, its re-index (unless none was asked for), and the categories
/// of the heads the service runs (when it has a heads folder), which the catalogue's may outgrow.
#[derive(Debug, Clone)]
pub struct Imported {
    pub summary: crate::feed::ImportSummary,
    pub reindex: Option<ReindexSummary>,
    pub heads: Option<Vec<String>>,
}

/// Where the service's heads come from, and what was last loaded from there.
pub(super) struct HeadsSource {
    config: Config,
    /// [`folder_fingerprint`] of the heads folder when its heads were loaded.
    loaded: Mutex<String>,
}

impl HeadsSource {
    pub(super) fn new(config: &Config) -> anyhow::Result<HeadsSource> {
        check_profile(config)?;
        Ok(HeadsSource { config: config.clone(), loaded: Mutex::new(folder_fingerprint(config)?) })
    }

    /// Loads the ensemble from the heads folder (run it on the model thread).
    pub(super) fn loader(&self) -> impl Fn() -> anyhow::Result<Ensemble> + Send + 'static {
        let config = self.config.clone();
        move || Ensemble::from_config(&config)
    }
}

fn check_profile(config: &Config) -> anyhow::Result<()> {
    let heads = HeadsInfo::load(&config.models.heads_dir)?;
    anyhow::ensure!(
        heads.profile == config.models.profile,
        "the heads in {} were trained for the {} profile, the config runs {}: train again or change models.profile",
        config.models.heads_dir.display(),
        heads.profile,
        config.models.profile
    );
    Ok(())
}

/// sha256 over the names and bytes of the files an ensemble loads from the heads folder
/// (`heads.json`, each backbone's head and fine-tuned layers): it changes whenever
/// `lookalike train` writes new heads there, and not when it writes a checkpoint.
fn folder_fingerprint(config: &Config) -> anyhow::Result<String> {
    let dir = &config.models.heads_dir;
    let files = vision::backbones(config.models.profile).into_iter().flat_map(|spec| [heads::head_path(dir, spec.id), heads::tuned_backbone_path(dir, spec.id)]);
    sha256_of_files(std::iter::once(heads::info_path(dir)).chain(files), true)
}

/// New heads loaded beside the running ones, until the re-index for them ends.
struct Staged {
    key: EmbeddingKey,
    fingerprint: String,
    /// The vectors depend on the heads: the catalogue is embedded again.
    re_embed: bool,
}

impl Upkeep {
    pub(super) fn new(config: &Config, models: Arc<ModelHandle>, backend: Arc<dyn Backend>, chunk: usize, heads: Option<HeadsSource>) -> Upkeep {
        Upkeep {
            models,
            backend,
            job: JobSettings {
                catalogue: config.catalogue.clone(),
                index_dir: config.index.dir.clone(),
                limits: ImageLimits::from_config(&config.limits),
                chunk,
                whitening: vision::ensemble::whitening(config),
                augmentation: config.index.database_augmentation,
            },
            heads,
            audit: AuditLog::open(&config.catalogue.audit_log),
            running: Mutex::new(()),
            stop: Default::default(),
        }
    }

    /// Where catalogue edits, corrections and swaps of heads are logged.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// For a shutdown: a re-index running now, and any later one in this process, stops after
    /// the chunk it is embedding, keeping what it embedded for the next process's re-index.
    pub fn interrupt_reindex(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Re-indexes the catalogue (`catalogue.dir`), incrementally, first loading new heads if the
    /// heads folder changed (see the module documentation); blocks until done, so async callers
    /// run it on a blocking thread. Refused while another re-index runs, here or in another
    /// process. Queries go on meanwhile and see the new generation once it is saved.
    pub fn reindex(&self, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        self.reindex_by(Who::cli(), progress)
    }

    /// [`reindex`](Self::reindex) asked for by `who` (whom the audit log names if heads are swapped).
    pub fn reindex_by(&self, who: Who, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        counted(self.run_reindex(who, progress))
    }

    fn run_reindex(&self, who: Who, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        let _one = self.running.try_lock().map_err(|_| ReindexError::AlreadyRunning("in this process".into()))?;
        let mut guard = self.backend.lock_reindex()?;
        let Some(staged) = self.stage_new_heads()? else {
            return self.reindex_under(guard.as_mut(), &self.models.current_key(), progress);
        };
        let result = self.reindex_under(guard.as_mut(), &staged.key, progress);
        self.finish_swap(staged, result, who)
    }

    /// Adds or removes one item under the re-index lock, then re-indexes (only a new photo is
    /// embedded), and logs the edit as `who`'s. Returns the item's id. If the re-index fails, an
    /// added photo is taken out again.
    pub fn edit_catalogue(&self, edit: Edit, who: Who, progress: &mut dyn FnMut(&Progress)) -> Result<(String, ReindexSummary), ReindexError> {
        counted(self.run_edit(edit, who, progress))
    }

    fn run_edit(&self, edit: Edit, who: Who, progress: &mut dyn FnMut(&Progress)) -> Result<(String, ReindexSummary), ReindexError> {
        let _one = self.running.try_lock().map_err(|_| ReindexError::AlreadyRunning("in this process".into()))?;
        // The edit is made under the re-index lock: no other re-index, here or in another
        // process, sees it half-made.
        let mut guard = self.backend.lock_reindex()?;
        let (settings, limits) = (&self.job.catalogue, self.job.limits);
        let id = match &edit {
            Edit::Add { photo, category, metadata } => catalogue::add(&settings.dir, &settings.metadata, photo, limits, category, metadata.as_ref())?,
            Edit::Remove { item } => catalogue::remove(&settings.dir, &settings.metadata, item)?,
        };
        let result = self.reindex_under(guard.as_mut(), &self.models.current_key(), progress);
        let not_embedded = result.as_ref().ok().and_then(|s| s.failed.iter().find(|f| f.id == id)).map(|f| f.reason.clone());
        match (&edit, result, not_embedded) {
            (Edit::Add { category, .. }, Ok(summary), None) => {
                self.log(who, Action::Added { item: id.clone(), category: category.clone() });
                Ok((id, summary))
            }
            (Edit::Add { .. }, result, reason) => {
                let why = reason.map_or_else(|| result.err().map(|e| format!("{e:#}")).unwrap_or_default(), |r| format!("it could not be embedded: {r}"));
                catalogue::remove(&settings.dir, &settings.metadata, &id).context("cannot take the photo out again")?;
                Err(anyhow::anyhow!("the photo was not added: {why}").into())
            }
            (Edit::Remove { .. }, Ok(summary), _) => {
                self.log(who, Action::Removed { item: id.clone() });
                Ok((id, summary))
            }
            (Edit::Remove { .. }, Err(err), _) => Err(anyhow::anyhow!("{id} was removed from the catalogue folder, but the index keeps it until the next re-index: {err}").into()),
        }
    }

    /// Imports a shop's product feed (a file or a URL; see [`crate::feed`]) under the re-index
    /// lock, then re-indexes incrementally (only new pictures are embedded) unless `index` is
    /// false, and logs the import as `who`'s. Refused while another re-index runs. A feed that
    /// cannot be read changes nothing.
    pub fn import_feed(&self, source: &str, options: &ImportOptions, index: bool, who: Who, progress: &mut dyn FnMut(ImportStage)) -> Result<Imported, ReindexError> {
        counted(self.run_import(source, options, index, who, progress))
    }

    fn run_import(&self, source: &str, options: &ImportOptions, index: bool, who: Who, progress: &mut dyn FnMut(ImportStage)) -> Result<Imported, ReindexError> {
        let _one = self.running.try_lock().map_err(|_| ReindexError::AlreadyRunning("in this process".into()))?;
        let mut guard = self.backend.lock_reindex()?;
        let settings = &self.job.catalogue;
        let fetch = crate::feed::FetchSettings { public_only: options.public_only, ..crate::feed::FetchSettings::from_config(settings) };
        let text = crate::feed::read_feed(source, settings.max_feed_mb << 20, fetch)?;
        let summary = crate::feed::import(&settings.dir, &settings.metadata, &text, options, fetch, self.job.limits, &mut |done, total| progress(ImportStage::Download { done, total }))?;
        self.log(who, Action::Imported { feed: source.to_string(), added: summary.added, updated: summary.updated, removed: summary.removed });
        let heads = self.heads.as_ref().and_then(|h| HeadsInfo::load(&h.config.models.heads_dir).ok()).map(|info| info.classes);
        let reindex = match index {
            true => Some(self.reindex_under(guard.as_mut(), &self.models.current_key(), &mut |p| progress(ImportStage::Index(*p)))?),
            false => None,
        };
        Ok(Imported { summary, reindex, heads })
    }

    /// Appends to the audit log; a failure to is logged, and the edit stands.
    pub(crate) fn log(&self, who: Who, action: Action) {
        if let Err(err) = self.audit.record(who, action) {
            tracing::warn!(cause = %format!("{err:#}"), "cannot write the audit log");
        }
    }

    /// The re-index proper, under `guard`, embedding with the ensemble whose vectors `key` describes.
    fn reindex_under(&self, guard: &mut dyn ReindexGuard, key: &EmbeddingKey, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        let catalogue = &self.job.catalogue;
        // In the index folder for either backend: a database's re-index is resumed by the same machine.
        let partial = self.job.index_dir.join("reindex-partial.bin");
        if let Err(err) = std::fs::create_dir_all(&self.job.index_dir) {
            tracing::warn!(cause = %err, "cannot create the index folder; an interrupted re-index will start over");
        }
        let texts_worker = self.models.worker.clone();
        // The items' words, embedded by the model thread's MiniLM (none when it is not loaded).
        let describe = move |texts: &[String]| -> anyhow::Result<Vec<Vec<f32>>> {
            let (owned, count) = (texts.to_vec(), texts.len());
            Ok(texts_worker.run_blocking(move |models: &mut Models| models.intent.sentence_vectors(&owned))??.unwrap_or_else(|| vec![Vec::new(); count]))
        };
        let job = ReindexJob {
            catalogue: &catalogue.dir,
            metadata: &catalogue.metadata,
            key,
            chunk: self.job.chunk,
            max_image_bytes: self.job.limits.max_bytes,
            partial: Some(&partial),
            stop: Some(&self.stop),
            describe: Some(&describe),
            whitening: self.job.whitening,
            augmentation: self.job.augmentation,
        };
        let (worker, source, limits, key) = (self.models.worker.clone(), self.models.source, self.job.limits, key.clone());
        let mut embed = move |paths: &[PathBuf]| -> Vec<Result<Vec<f32>, String>> {
            let decoded: Vec<Result<RgbImage, String>> = imaging::load_many(paths, limits).into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
            let (images, reasons): (Vec<_>, Vec<_>) = decoded
                .into_iter()
                .map(|d| match d {
                    Ok(image) => (Some(image), None),
                    Err(reason) => (None, Some(reason)),
                })
                .unzip();
            let images: Vec<RgbImage> = images.into_iter().flatten().collect();
            let key = key.clone();
            let embedded = worker
                .run_blocking(move |models: &mut Models| {
                    let ensemble = models.matching(&key).map_err(anyhow::Error::msg)?;
                    Ok(ensemble.classify(&images, false)?.into_iter().map(|c| c.embedding(source)).collect::<Vec<_>>())
                })
                .and_then(|r| r);
            match embedded {
                Ok(vectors) => {
                    let mut vectors = vectors.into_iter();
                    reasons.into_iter().map(|reason| reason.map_or_else(|| vectors.next().ok_or_else(|| "no vector came back".to_string()), Err)).collect()
                }
                Err(err) => paths.iter().map(|_| Err(err.to_string())).collect(),
            }
        };
        guard.reindex(&job, &mut embed, progress)
    }

    /// Loads the heads folder's ensemble beside the running one when the folder changed since the
    /// last load; none when it did not (or the service was built in code).
    fn stage_new_heads(&self) -> Result<Option<Staged>, ReindexError> {
        let Some(heads) = &self.heads else { return Ok(None) };
        let fingerprint = folder_fingerprint(&heads.config)?;
        if *heads.loaded.lock().expect("heads lock") == fingerprint {
            return Ok(None);
        }
        check_profile(&heads.config)?;
        let (key, current) = (embedding_key(&heads.config)?, self.models.current_key());
        let (load, staged_key) = (heads.loader(), key.clone());
        let started = Instant::now();
        self.models
            .worker
            .run_blocking(move |models: &mut Models| -> anyhow::Result<()> {
                let ensemble = load()?;
                match models.ensembles.iter_mut().find(|(k, _)| *k == staged_key) {
                    // The vectors do not depend on the heads: the vote changes now, the index stays.
                    Some(slot) => slot.1 = ensemble,
                    None => models.ensembles.push((staged_key, ensemble)),
                }
                Ok(())
            })
            .and_then(|r| r)
            .context("cannot load the new heads; the running ones stay")?;
        let re_embed = key != current;
        if re_embed {
            self.models.keys.write().expect("keys lock").push(key.clone());
        }
        tracing::info!(heads_dir = %heads.config.models.heads_dir.display(), re_embed, load_ms = millis(started.elapsed()), "new heads loaded");
        Ok(Some(Staged { key, fingerprint, re_embed }))
    }

    /// After the re-index for new heads: the new ensemble alone stays if it succeeded (or did not
    /// need to embed anything again), else the old one.
    fn finish_swap(&self, staged: Staged, result: Result<ReindexSummary, ReindexError>, who: Who) -> Result<ReindexSummary, ReindexError> {
        let swapped = result.is_ok() || !staged.re_embed;
        let keep = if swapped { staged.key.clone() } else { self.models.current_key() };
        let kept = keep.clone();
        self.models.worker.run_blocking(move |models: &mut Models| models.ensembles.retain(|(k, _)| *k == kept))?;
        *self.models.keys.write().expect("keys lock") = vec![keep];
        if swapped {
            let heads = self.heads.as_ref().expect("staged heads have a source");
            *heads.loaded.lock().expect("heads lock") = staged.fingerprint;
            self.log(who, Action::HeadsSwapped { heads_dir: heads.config.models.heads_dir.display().to_string(), re_embedded: staged.re_embed });
        }
        result.map(|summary| ReindexSummary { new_heads: true, ..summary })
    }
}

/// Runs a re-index or edit with a progress bar; returns what it returned.
pub fn with_bar<T>(job: impl FnOnce(&mut dyn FnMut(&Progress)) -> Result<T, ReindexError>) -> anyhow::Result<T> {
    let bar = crate::progress::bar(0, "index {bar:30} {pos}/{len} images to embed, {msg}");
    let done = job(&mut |progress| {
        bar.set_length(progress.total as u64);
        bar.set_position(progress.done as u64);
        let eta = progress.eta_s().map_or("eta -".to_string(), |s| format!("eta {s:.0} s"));
        bar.set_message(format!("{:.1} images/s, {eta}", progress.rate()));
    })?;
    bar.finish_and_clear();
    Ok(done)
}

/// Counts a re-index (or an edit's) in `lookalike_reindex_total` by its outcome.
fn counted<T>(result: Result<T, ReindexError>) -> Result<T, ReindexError> {
    crate::metrics::METRICS.reindex(result.as_ref().map_or_else(ReindexError::outcome, |_| "ok"));
    result
}

/// Re-indexes `catalogue.dir` with a progress bar; returns what changed.
pub fn reindex_with_bar(service: &SearchService) -> anyhow::Result<ReindexSummary> {
    with_bar(|progress| service.upkeep().reindex(progress))
}
