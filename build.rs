//! Stamps the binary's version with the git commit it was built from: `stepwise --version`
//! prints `0.1.0 (abc1234)`, `0.1.0 (abc1234-dirty)` with uncommitted changes, and
//! `0.1.0 (commit unknown)` when not built from a git checkout (e.g. a source archive).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let commit = git(&["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty());
    let stamp = match commit {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|changes| !changes.is_empty());
            format!("{version} ({commit}{})", if dirty { "-dirty" } else { "" })
        }
        None => format!("{version} (commit unknown)"),
    };
    println!("cargo:rustc-env=STEPWISE_VERSION={stamp}");
    // Run again when the commit or the index changes, and on edits of the sources (which
    // rebuild this crate anyway) so that `-dirty` stays true.
    for path in ["HEAD", "index", "packed-refs"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(file) = git(&["rev-parse", "--git-path", &reference]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
}
