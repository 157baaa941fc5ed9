//! What `cargo install --path .` users meet first: `--version` names the commit, and
//! `completions` prints a script for each shell.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn stepwise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn version_prints_the_version_and_the_commit() {
    let text = stdout(&stepwise(&["--version"]));
    let line = text.trim();
    let prefix = format!("stepwise {} (", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&prefix) && line.ends_with(')'), "{line}");
    let stamp = &line[prefix.len()..line.len() - 1];
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        // Built from this checkout: the commit, maybe marked dirty.
        Some(head) => assert!(
            stamp == head || stamp == format!("{head}-dirty"),
            "{stamp} is not {head}[-dirty]"
        ),
        None => assert_eq!(stamp, "commit unknown"),
    }
    assert_eq!(stdout(&stepwise(&["-V"])), text);
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let bash = stdout(&stepwise(&["completions", "bash"]));
    assert!(bash.contains("complete -F _stepwise"), "{bash}");
    assert!(
        bash.contains("doctor") && bash.contains("sagas"),
        "subcommands listed"
    );

    let zsh = stdout(&stepwise(&["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef stepwise"), "{zsh}");

    let fish = stdout(&stepwise(&["completions", "fish"]));
    assert!(fish.contains("complete -c stepwise"), "{fish}");
    assert!(fish.contains("doctor"), "{fish}");

    let unknown = stepwise(&["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2));
}
