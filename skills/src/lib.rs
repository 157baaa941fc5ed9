//! Stepwise skills: the Dewy Resort skills, their connectors, the external-systems sandbox,
//! and the synthetic diagnostic skill used by tests, benchmarks and chaos runs.

pub mod sandbox;
