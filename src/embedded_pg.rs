//! Embedded PostgreSQL (work in progress).
