//! The model-id rule lives in the wire contract, shared by the scorer and the proxy so they
//! cannot disagree; configuration validates pinned ids with it.

pub use manymodels_contract::{MAX_MODEL_ID_LEN, valid_model_id};
