//! The models a server offers ([`Served`]): which name a request means, loading a model on
//! first use (fetched and verified through [`crate::models`], loaded on a blocking thread),
//! leases that keep a model loaded while a request, stream or job uses it, and unloading after
//! an idle time or to make room in the memory budget. The rules (budget, LRU, idle) are the
//! pure [`crate::models::resident::Residency`]; this is its I/O shell.
//!
//! The pool's default model is pinned: loaded at start, never unloaded, counted in the budget.
//! Loading one model never blocks requests for others: only requests for the same model wait
//! for it, on an async lock, while the load runs on the blocking pool.
//!
//! This module must not run jobs (the pool does) or know about requests and wire formats: it
//! answers with a [`Lease`] or a typed [`Refusal`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Mutex as AsyncMutex;

use super::engine::{InferenceError, Options};
use super::model::Model;
use super::pool::{Busy, JobHandle, Pool};
use crate::audio::SharedAudio;
use crate::models::resident::{NoRoom, Residency};
use crate::models::{Fetcher, ModelError};

/// How to build the set of served models.
#[derive(Debug, Clone)]
pub struct ServedConfig {
    /// Names (or paths) of the other models that may be served, besides the pool's default.
    pub others: Vec<String>,
    /// Where model files are kept and fetched to.
    pub models_dir: PathBuf,
    /// Where missing model files come from (mirror, hub).
    pub fetcher: Fetcher,
    /// Bytes all resident models may take; `None` = the sum of the served models' file sizes,
    /// as they become known (every model fits; only idle time unloads).
    pub budget: Option<u64>,
    /// A model nobody has used for this long is unloaded (not the default model).
    pub idle_unload: Duration,
}

/// Why a request cannot have the model it asked for.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The name is not one this server serves.
    #[error("unknown model {name:?}; this server serves: {}", available.join(", "))]
    Unknown {
        /// What was asked for.
        name: String,
        /// The names that would have worked, default first.
        available: Vec<String>,
    },
    /// The memory budget cannot take the model now (others in use) or ever (too big).
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
    /// The file could not be fetched or verified.
    #[error(transparent)]
    Fetch(#[from] ModelError),
    /// The file could not be loaded.
    #[error(transparent)]
    Load(#[from] InferenceError),
}

impl Refusal {
    /// Whether trying again later may succeed (the budget is held by models in use).
    pub fn is_busy(&self) -> bool {
        matches!(self, Refusal::NoRoom(NoRoom::Busy { .. }))
    }
}

/// What the API shows of one served model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelStatus {
    /// The name requests use.
    pub name: String,
    /// The model requests get when they name none (or an OpenAI name).
    pub default: bool,
    /// In memory now.
    pub loaded: bool,
    /// Requests, streams and jobs using it now.
    pub in_use: usize,
    /// Leases taken on it since the start.
    pub requests: u64,
    /// Transcribes more than English; `None` until it has been loaded once.
    pub multilingual: Option<bool>,
}

/// The models a server offers; cheap to clone.
#[derive(Clone)]
pub struct Served {
    /// Everything shared by the clones.
    inner: Arc<Inner>,
}

/// What the clones share.
struct Inner {
    /// The workers every model's jobs run on; its default model is the default here.
    pool: Pool,
    /// Served names, default first.
    names: Vec<String>,
    /// What each served name was configured as (a name or a path), for fetching.
    sources: HashMap<String, String>,
    /// Where model files live.
    models_dir: PathBuf,
    /// Fetches missing files.
    fetcher: Fetcher,
    /// Idle time after which a model is unloaded.
    idle_unload: Duration,
    /// A fixed budget, or `None` for the sum of known file sizes.
    fixed_budget: Option<u64>,
    /// One lock per served name, held while it loads, so two requests never load it twice.
    load_locks: HashMap<String, Arc<AsyncMutex<()>>>,
    /// The bookkeeping and the loaded models, behind one short-held lock.
    state: Mutex<State>,
}

/// The changing part, always changed together.
struct State {
    /// Budget, users, LRU order.
    residency: Residency,
    /// The models in memory; dropping one here (and its jobs ending) frees it.
    loaded: HashMap<String, Arc<Model>>,
    /// File sizes known so far (for the automatic budget and the API).
    sizes: HashMap<String, u64>,
    /// Whether each model that has been loaded once is multilingual.
    multilingual: HashMap<String, bool>,
    /// Leases taken per model since the start.
    requests: HashMap<String, u64>,
}

impl Served {
    /// Serves the pool's default model (pinned) and `config.others`, loaded on first use.
    /// File sizes of models already on disk are read now for the automatic budget.
    pub fn new(pool: Pool, config: ServedConfig) -> Served {
        let default = pool.default_model().clone();
        let mut names = vec![default.name().to_owned()];
        let mut sources = HashMap::new();
        for source in &config.others {
            let name = name_of(source);
            if !names.contains(&name) {
                names.push(name.clone());
                sources.insert(name, source.clone());
            }
        }
        let mut sizes = HashMap::new();
        for (name, source) in &sources {
            let path = crate::models::resolve(source, &config.models_dir);
            if let Ok(meta) = std::fs::metadata(path) {
                sizes.insert(name.clone(), meta.len());
            }
        }
        let default_bytes = default.bytes();
        sizes.insert(default.name().to_owned(), default_bytes);
        let now = Instant::now();
        let mut residency = Residency::new(config.budget.unwrap_or(0));
        if config.budget.is_none() {
            residency.set_budget(sizes.values().sum());
        }
        residency.pin(default.name(), default_bytes, now);
        let load_locks = names
            .iter()
            .map(|n| (n.clone(), Arc::new(AsyncMutex::new(()))))
            .collect();
        let state = State {
            residency,
            loaded: HashMap::from([(default.name().to_owned(), default.clone())]),
            sizes,
            multilingual: HashMap::from([(default.name().to_owned(), default.is_multilingual())]),
            requests: HashMap::new(),
        };
        Served {
            inner: Arc::new(Inner {
                pool,
                names,
                sources,
                models_dir: config.models_dir,
                fetcher: config.fetcher,
                idle_unload: config.idle_unload,
                fixed_budget: config.budget,
                load_locks,
                state: Mutex::new(state),
            }),
        }
    }

    /// Only the pool's default model, never anything else (the CLI's `transcribe`, tests).
    pub fn single(pool: Pool) -> Served {
        Served::new(
            pool,
            ServedConfig {
                others: Vec::new(),
                models_dir: PathBuf::from("models"),
                fetcher: Fetcher::default(),
                budget: None,
                idle_unload: Duration::from_secs(600),
            },
        )
    }

    /// The pool every model's jobs run on.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Served names, default first.
    pub fn names(&self) -> &[String] {
        &self.inner.names
    }

    /// The default model's name.
    pub fn default_name(&self) -> &str {
        &self.inner.names[0]
    }

    /// The served name a request means: none, an empty name or one of OpenAI's names mean the
    /// default; a served name means itself; anything else is [`Refusal::Unknown`].
    pub fn resolve(&self, requested: Option<&str>) -> Result<&str, Refusal> {
        let requested = requested.map(str::trim).filter(|n| !n.is_empty());
        match requested {
            None => Ok(self.default_name()),
            Some(name) if crate::models::is_openai_name(name) => Ok(self.default_name()),
            Some(name) => self
                .inner
                .names
                .iter()
                .find(|n| *n == name)
                .map(String::as_str)
                .ok_or_else(|| Refusal::Unknown {
                    name: name.to_owned(),
                    available: self.inner.names.clone(),
                }),
        }
    }

    /// Whether the named model would be taken now: served, and loaded or fitting the budget
    /// (by unloading idle models). A quick check for requests that answer before their job
    /// runs; [`Served::acquire`] decides for real.
    pub fn check(&self, requested: Option<&str>) -> Result<(), Refusal> {
        let name = self.resolve(requested)?.to_owned();
        let state = self.lock();
        if state.residency.is_loaded(&name) {
            return Ok(());
        }
        let Some(&bytes) = state.sizes.get(&name) else {
            return Ok(()); // not fetched yet: its size is known only after the fetch
        };
        let mut trial = state.residency.clone();
        trial.admit(&name, bytes, Instant::now())?;
        Ok(())
    }

    /// A lease on the named model, loading it first if needed (others are served meanwhile).
    pub async fn acquire(&self, requested: Option<&str>) -> Result<Lease, Refusal> {
        let name = self.resolve(requested)?.to_owned();
        self.expire_idle();
        if let Some(lease) = self.try_lease(&name) {
            return Ok(lease);
        }
        let lock = self.inner.load_locks[&name].clone();
        let _loading = lock.lock().await;
        if let Some(lease) = self.try_lease(&name) {
            return Ok(lease); // another request loaded it while this one waited
        }
        self.load(&name).await?;
        self.try_lease(&name)
            .ok_or(Refusal::Load(InferenceError::ShutDown))
    }

    /// Whether the named model transcribes more than English: known once it has been loaded,
    /// else read from its name (whisper.cpp names English-only models `*.en`).
    pub fn is_multilingual(&self, name: &str) -> bool {
        let known = self.lock().multilingual.get(name).copied();
        known.unwrap_or_else(|| !crate::models::is_english_only(name))
    }

    /// What each served model is doing, default first.
    pub fn status(&self) -> Vec<ModelStatus> {
        let state = self.lock();
        self.inner
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| ModelStatus {
                name: name.clone(),
                default: i == 0,
                loaded: state.residency.is_loaded(name),
                in_use: state.residency.users(name),
                requests: state.requests.get(name).copied().unwrap_or(0),
                multilingual: state.multilingual.get(name).copied(),
            })
            .collect()
    }

    /// Bytes the resident models take, and the budget.
    pub fn memory(&self) -> (u64, u64) {
        let state = self.lock();
        (state.residency.used(), state.residency.budget())
    }

    /// Unloads the models idle for the idle time; returns their names.
    pub fn expire_idle(&self) -> Vec<String> {
        let gone = {
            let mut state = self.lock();
            let gone = state
                .residency
                .expire(Instant::now(), self.inner.idle_unload);
            for name in &gone {
                state.loaded.remove(name);
            }
            gone
        };
        for name in &gone {
            tracing::info!(model = %name, "model unloaded after its idle time");
        }
        gone
    }

    /// Unloads idle models on time until `stop` completes (run it on the server's tracker).
    pub async fn expire_loop(self, stop: impl std::future::Future<Output = ()>) {
        let every =
            (self.inner.idle_unload / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => { self.expire_idle(); }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The lock is held only for bookkeeping, which does not panic; recover if it did.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A lease if the model is loaded.
    fn try_lease(&self, name: &str) -> Option<Lease> {
        let mut state = self.lock();
        if !state.residency.acquire(name) {
            return None;
        }
        let model = state.loaded.get(name)?.clone();
        *state.requests.entry(name.to_owned()).or_default() += 1;
        Some(Lease {
            model,
            served: self.clone(),
        })
    }

    /// Fetches, admits (unloading idle models as needed) and loads `name`.
    async fn load(&self, name: &str) -> Result<(), Refusal> {
        let source = self
            .inner
            .sources
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned());
        let (fetcher, dir) = (self.inner.fetcher.clone(), self.inner.models_dir.clone());
        let path = blocking(move || fetcher.ensure(&source, &dir)).await??;
        let bytes = file_size(&path);
        self.admit(name, bytes)?;
        let (owned, load_path) = (name.to_owned(), path.clone());
        let loaded = blocking(move || Model::load(&owned, &load_path)).await;
        let mut state = self.lock();
        match loaded {
            Ok(Ok(model)) => {
                tracing::info!(model = %name, bytes, "model loaded");
                state
                    .multilingual
                    .insert(name.to_owned(), model.is_multilingual());
                state.loaded.insert(name.to_owned(), Arc::new(model));
                state.residency.loaded(name, Instant::now());
                Ok(())
            }
            Ok(Err(error)) => {
                state.residency.failed(name);
                Err(error.into())
            }
            Err(error) => {
                state.residency.failed(name);
                Err(error)
            }
        }
    }

    /// Reserves room for `name`, unloading the idle models the budget needs gone.
    fn admit(&self, name: &str, bytes: u64) -> Result<(), Refusal> {
        let mut state = self.lock();
        state.sizes.insert(name.to_owned(), bytes);
        if self.inner.fixed_budget.is_none() {
            let total = state.sizes.values().sum();
            state.residency.set_budget(total);
        }
        let admission = state.residency.admit(name, bytes, Instant::now())?;
        for victim in &admission.evict {
            state.loaded.remove(victim);
            tracing::info!(model = %victim, for_model = %name, "model unloaded to make room");
        }
        Ok(())
    }

    fn release(&self, name: &str) {
        self.lock().residency.release(name, Instant::now());
    }
}

/// A model held for one request, stream or job: it stays loaded until the lease is dropped.
pub struct Lease {
    /// The model, held (so its memory stays) for the lease's life.
    model: Arc<Model>,
    /// Where to give it back.
    served: Served,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lease").field(&self.model.name()).finish()
    }
}

impl Lease {
    /// The leased model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Queues a job on this model, waiting for queue space (see [`Pool::submit_blocking`]).
    pub fn submit_blocking(
        &self,
        audio: impl Into<SharedAudio>,
        options: Options,
    ) -> Result<JobHandle, InferenceError> {
        self.served
            .pool()
            .submit_blocking_to(&self.model, audio, options)
    }

    /// Queues a job on this model without waiting (see [`Pool::submit`]).
    pub fn submit(
        &self,
        audio: impl Into<SharedAudio>,
        options: Options,
    ) -> Result<JobHandle, Busy> {
        self.served.pool().submit_to(&self.model, audio, options)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.served.release(self.model.name());
    }
}

/// Runs `f` on the blocking pool; a panic there is a load error, not a crash.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Refusal::Load(InferenceError::Worker(format!(
            "model loading stopped: {e}"
        )))
    })
}

/// The served name of a configured model: a path's model name, or the name itself.
fn name_of(source: &str) -> String {
    if source.ends_with(".bin") || source.contains('/') {
        super::model::name_of(Path::new(source))
    } else {
        source.to_owned()
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
