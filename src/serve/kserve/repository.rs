//! The model repository extension, whatever the transport: the index of the models on disk
//! and their state, (re)loading one, unloading one. Loading builds and warms up sessions, so it
//! runs on the blocking pool; a failed reload leaves the previous version serving.

use std::path::Path;
use std::sync::Arc;

use crate::repository::{RepositoryError, list_models};
use crate::serve::infer::{InferError, LoadedModel, ModelRegistry};

/// Why a load or unload failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryCallError {
    /// No such model in the repository (nor loaded), or a name that cannot be one.
    #[error("model {0:?} is not loaded")]
    NotFound(String),
    /// The model's folder is gone from the repository: it was unloaded.
    #[error("model {0:?} is no longer in the repository; it was unloaded")]
    Removed(String),
    /// The model could not be loaded; the previous version, if any, keeps serving.
    #[error("reload failed, previous version still serving: {0}")]
    Failed(String),
    /// The load task itself failed (a panic).
    #[error("reload task failed: {0}")]
    Internal(String),
}

/// State of a model in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    /// Loaded and serving.
    Ready,
    /// In the repository, but its last load failed (the reason says why).
    Unavailable,
    /// In the repository, not loaded (unloaded, or added since the start).
    Unloaded,
}

impl ModelState {
    /// Triton's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
            ModelState::Unloaded => "UNLOADED",
        }
    }
}

/// One model of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Served version (empty when not loaded).
    pub version: String,
    /// Its state.
    pub state: ModelState,
    /// Why it is not ready (empty when ready or merely unloaded).
    pub reason: String,
}

/// Every model in the repository folder or loaded (a loaded model whose folder was removed is
/// still listed: it serves until a load or unload), sorted by name; `ready_only` keeps the
/// ready ones.
pub fn index(
    registry: &ModelRegistry,
    models_dir: &Path,
    ready_only: bool,
) -> Result<Vec<IndexEntry>, RepositoryError> {
    let mut names = list_models(models_dir)?;
    names.extend(registry.names());
    names.sort();
    names.dedup();
    let failures = registry.failures();
    Ok(names
        .into_iter()
        .map(|name| match (registry.get(&name), failures.get(&name)) {
            (Some(m), _) => IndexEntry {
                version: m.files.metadata.version.clone(),
                name,
                state: ModelState::Ready,
                reason: String::new(),
            },
            (None, Some(why)) => IndexEntry {
                reason: why.clone(),
                name,
                version: String::new(),
                state: ModelState::Unavailable,
            },
            (None, None) => IndexEntry {
                name,
                version: String::new(),
                state: ModelState::Unloaded,
                reason: String::new(),
            },
        })
        .filter(|e| !ready_only || e.state == ModelState::Ready)
        .collect())
}

/// Re-reads the model and its calibrator and swaps them in; on failure the previous version
/// keeps serving. A model whose folder is gone from the repository is unloaded (`Removed`): the
/// repository on disk is what a load makes the server serve, and a model that exists nowhere
/// but in memory would vanish at the next restart.
pub async fn load(
    registry: &Arc<ModelRegistry>,
    name: &str,
) -> Result<Arc<LoadedModel>, RepositoryCallError> {
    let r = Arc::clone(registry);
    let owned = name.to_string();
    let loaded = tokio::task::spawn_blocking(move || r.load(&owned))
        .await
        .map_err(|e| RepositoryCallError::Internal(e.to_string()))?;
    match loaded {
        Ok(m) => Ok(m),
        Err(InferError::Repository(RepositoryError::NotFound { name, .. })) => {
            if registry.unload(&name) {
                tracing::warn!(model = %name, "model folder removed from the repository: unloaded");
                Err(RepositoryCallError::Removed(name))
            } else {
                Err(RepositoryCallError::NotFound(name))
            }
        }
        Err(InferError::Repository(RepositoryError::InvalidName(name))) => {
            Err(RepositoryCallError::NotFound(name))
        }
        Err(e) => {
            tracing::warn!(error = %e, "reload failed; previous version keeps serving");
            Err(RepositoryCallError::Failed(e.to_string()))
        }
    }
}

/// Stops serving `name`; requests in flight finish on the model they hold. Its files stay in
/// the repository (the index lists it as unloaded) and a load serves it again.
pub fn unload(registry: &ModelRegistry, name: &str) -> Result<(), RepositoryCallError> {
    if registry.unload(name) {
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    } else {
        Err(RepositoryCallError::NotFound(name.to_string()))
    }
}
