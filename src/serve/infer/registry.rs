//! The set of served models, by name, and its reload. Loading is blocking (sessions are built
//! and warmed up): call it from a blocking context. A failed reload leaves the old model serving.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use std::path::PathBuf;

use super::{InferError, LoadedModel, ModelOptions};
use crate::repository::{list_models, load_model_files};
use crate::serve::prometheus::ServerMetrics;

/// Where the models are and how to run them.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `models/` folder.
    pub models_dir: PathBuf,
    /// `calib/` folder.
    pub calib_dir: PathBuf,
    /// Load calibration files fitted on another model file instead of refusing the model.
    pub allow_stale_calibration: bool,
    /// How each model runs.
    pub model: ModelOptions,
}

/// Called after every load that put a model in service, with the model and whether it replaced
/// one that predicts differently (another model file or another calibrator: evidence gathered
/// on the old one no longer applies).
pub type LoadHook = Box<dyn Fn(&LoadedModel, bool) + Send + Sync>;

/// Served models plus the start-up failures that keep the server from being ready.
pub struct ModelRegistry {
    config: RegistryOptions,
    metrics: Arc<ServerMetrics>,
    models: RwLock<BTreeMap<String, Arc<LoadedModel>>>,
    failed: RwLock<BTreeMap<String, String>>,
    on_load: OnceLock<LoadHook>,
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRegistry")
            .field("config", &self.config)
            .field("models", &self.models)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new(config: RegistryOptions, metrics: Arc<ServerMetrics>) -> Self {
        Self {
            config,
            metrics,
            models: RwLock::default(),
            failed: RwLock::default(),
            on_load: OnceLock::new(),
        }
    }

    /// Sets the hook run after every load, told whether the load changed a served model's file
    /// or calibrator (a recalibration, manual or automatic, or `load` after
    /// `calib/<model>.json` changed). The server registers the model's calibration file with
    /// the monitor through it, which resets the model's live trust state after such a swap
    /// (`Monitor::model_loaded`). Only the first hook set is kept.
    pub fn on_load(&self, hook: LoadHook) {
        let _ = self.on_load.set(hook);
    }

    /// Loads every model of the repository; failures are logged and remembered (the server
    /// then reports not ready) instead of stopping the others. Returns the number loaded.
    pub fn load_all(&self) -> Result<usize, InferError> {
        let names = list_models(&self.config.models_dir)?;
        for name in &names {
            if let Err(e) = self.load(name) {
                tracing::error!(model = %name, error = %e, "model not loaded");
                self.failed
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.clone(), e.to_string());
            }
        }
        Ok(self.names().len())
    }

    /// (Re)loads one model from disk and swaps it in. On error the previous version, if any,
    /// keeps serving.
    pub fn load(&self, name: &str) -> Result<Arc<LoadedModel>, InferError> {
        let c = &self.config;
        let files = load_model_files(&c.models_dir, &c.calib_dir, name, c.allow_stale_calibration)?;
        let model = Arc::new(LoadedModel::start(
            files,
            &c.model,
            Arc::clone(&self.metrics),
        )?);
        let old = self
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), Arc::clone(&model));
        let changed = old.as_ref().is_some_and(|o| {
            o.files.sha256 != model.files.sha256 || o.calibrator != model.calibrator
        });
        if let Some(hook) = self.on_load.get() {
            hook(&model, changed);
        }
        if let Some(old) = old.filter(|o| o.info_labels() != model.info_labels()) {
            let _ = self
                .metrics
                .model_info
                .remove_label_values(&old.info_labels().each_ref().map(String::as_str));
        }
        self.failed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        tracing::info!(
            model = name,
            version = %model.files.metadata.version,
            sha256 = %model.files.sha256,
            calibration = model.calibrator.method(),
            device = %model.device,
            max_batch_size = model.max_batch_size,
            stale_calibration = model.files.stale_calibration,
            "model loaded"
        );
        Ok(model)
    }

    /// Stops serving `name` (requests in flight finish on the model they hold). Returns whether
    /// it was loaded.
    pub fn unload(&self, name: &str) -> bool {
        let old = self
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        self.failed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        match old {
            Some(old) => {
                let _ = self
                    .metrics
                    .model_info
                    .remove_label_values(&old.info_labels().each_ref().map(String::as_str));
                true
            }
            None => false,
        }
    }

    /// The `calib/` folder models are loaded from (where a recalibration writes).
    pub fn calib_dir(&self) -> &std::path::Path {
        &self.config.calib_dir
    }

    /// The model called `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Names of the loaded models, sorted.
    pub fn names(&self) -> Vec<String> {
        self.models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Models that failed to load at start and have not been fixed by a reload, with why.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.failed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ready = at least one model, every model of the repository loaded and warmed up.
    pub fn is_ready(&self) -> bool {
        !self.names().is_empty() && self.failures().is_empty()
    }
}
