//! Rebuilds the engine when a migration is added or changed: `sqlx::migrate!` embeds the
//! migration directories at compile time, and cargo would not notice new files otherwise.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=tests/fixtures");
}
