//! The external-systems sandbox (work in progress).
