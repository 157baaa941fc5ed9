//! Who a command acts as when the caller does not say (`--actor`): the OS user and host, so the
//! history of a saga shows which account on which machine started, cancelled or replayed it
//! (README, "Command line"; docs/operators.md).

/// `cli:{user}@{host}`: starts and token creations.
pub fn cli_actor() -> String {
    format!("cli:{}", os_identity())
}

/// `operator:{user}@{host}`: cancels, retries, restarts, forks, prunes and sends events.
pub fn operator_actor() -> String {
    format!("operator:{}", os_identity())
}

/// `user@host` of this process, falling back gracefully: the host is left out when the OS
/// will not say it, and the user is the numeric uid when even the passwd database has no name.
fn os_identity() -> String {
    identity(os_user(), os_host(), nix::unistd::getuid().as_raw())
}

/// `$USER` (or `$LOGNAME`) when set, since that is who the shell says it is (and what tests
/// and `sudo -u` set); else the passwd entry of the real user id.
fn os_user() -> Option<String> {
    let from_env = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.trim().is_empty());
    from_env.or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|user| user.name)
    })
}

fn os_host() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|host| host.into_string().ok())
}

fn identity(user: Option<String>, host: Option<String>, uid: u32) -> String {
    let user = user
        .map(|user| user.trim().to_string())
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| format!("uid{uid}"));
    match host.map(|host| host.trim().to_string()) {
        Some(host) if !host.is_empty() => format!("{user}@{host}"),
        _ => user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_host_make_the_identity() {
        assert_eq!(
            identity(Some("alice".into()), Some("desk-1".into()), 1000),
            "alice@desk-1"
        );
    }

    #[test]
    fn a_missing_host_is_left_out() {
        assert_eq!(identity(Some("alice".into()), None, 1000), "alice");
        assert_eq!(
            identity(Some("alice".into()), Some(" ".into()), 1000),
            "alice"
        );
    }

    #[test]
    fn a_user_without_a_name_is_its_uid() {
        assert_eq!(
            identity(None, Some("desk-1".into()), 1000),
            "uid1000@desk-1"
        );
        assert_eq!(identity(Some("".into()), None, 0), "uid0");
    }

    #[test]
    fn this_process_has_a_named_identity() {
        let actor = cli_actor();
        assert!(actor.starts_with("cli:"), "{actor}");
        assert!(!actor.contains("unknown"), "{actor}");
        assert!(operator_actor().starts_with("operator:"));
    }
}
