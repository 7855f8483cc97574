//! `TreeEnsembleRegressor` and `TreeEnsembleClassifier` (ai.onnx.ml opset 1/3), as ONNX
//! Runtime 1.31 builds and evaluates them (`tree_ensemble_common.h`,
//! `tree_ensemble_aggregator.h`):
//!
//! - Trees start wherever `nodes_treeids` changes from one node to the next, in file
//!   order, and are summed in that order, one row at a time (ONNX Runtime's order when it
//!   runs a session on one intra-op thread, as the scorer does).
//! - Nodes are laid out depth first with the false child next to its parent, so a split
//!   stores only its true child; a true child may be shared (LightGBM's set membership is
//!   a chain of `BRANCH_EQ` nodes with one true child), a cycle is refused.
//! - Thresholds and sums are `float` for float and integer inputs and `double` for double
//!   inputs; outputs are `float`.
//!
//! A node costs 12 bytes for float models (16 for double ones), and 4 more when the file
//! carries covers (`covers`); multi-output ensembles add 8 bytes (16) per leaf weight:
//! about 0.3x the ONNX file (0.4-0.5x with covers), against ONNX Runtime's 5-6x.
//! Exported forests compile in one pass (`fast`); everything else takes `general`, which
//! decodes per-node records, finds nodes by their ids (`index`) and lays the trees out
//! (`layout`). Both attach leaf weights the same way (`weights`). `ensemble` holds the
//! compiled types, `compile` reads the node's small attributes and picks the path, and
//! `eval` runs the compiled ensemble. This file only names the modules and what the rest of
//! the crate uses of them.

mod compile;
mod covers;
mod ensemble;
mod eval;
mod fast;
mod general;
mod index;
mod layout;
mod shap;
#[cfg(test)]
mod tests;
mod weights;

pub(crate) use compile::compile;
pub(crate) use covers::check as check_covers;
#[cfg(test)]
pub(crate) use ensemble::WORD_BITS;
pub(crate) use ensemble::{
    Aggregate, Classes, Core, Covers, Ensemble, Labels, MAX_TARGETS, Mode, NoCovers, Node, Num,
    Trees, Weight,
};
