//! The wire contract between mm-proxy and mm-scorer.
