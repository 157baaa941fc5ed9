//! The console's pages.

pub mod audit;
pub mod detail;
pub mod list;
pub mod overview;
pub mod signin;
