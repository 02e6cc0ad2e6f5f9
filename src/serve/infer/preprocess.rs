//! The server's image preprocessing is the shared one in [`crate::repository::preprocess`]
//! (also used by `caliper calibrate`, `eval`, `eval-ood` and the trainer's image-file loader),
//! re-exported here for the request path.

pub use crate::repository::preprocess::{
    ImageLimits, PreprocessError, decode, plan, preprocess, preprocess_cancellable,
};
