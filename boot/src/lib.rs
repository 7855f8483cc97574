//! What every manymodels binary does at start.
