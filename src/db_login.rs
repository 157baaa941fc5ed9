//! Whether a PostgreSQL server lets us in, and how a failed login is told to the user.
//!
//! A login can fail in three ways that call for different actions: nothing answers (start the
//! server, or let `stepwise` start its embedded one), the server answers but refuses us (a
//! missing or wrong password, no `pg_hba.conf` entry, an unknown role: fix the URL), or
//! anything else (a bug or a broken server). `stepwise` falls back to its embedded PostgreSQL
//! only in the first two cases and only when `DATABASE_URL` is unset (see README, Set-up).

/// Why connecting to a server failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginFailure {
    /// Nothing answered: connection refused, timed out, unknown host.
    Unreachable(String),
    /// The server answered and refused the login; the text is the server's answer.
    Refused(String),
    /// Any other failure.
    Other(String),
}

impl LoginFailure {
    /// Classifies a connection error from sqlx.
    pub fn of(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(e) => Self::Unreachable(e.to_string()),
            sqlx::Error::PoolTimedOut => Self::Unreachable("timed out connecting".into()),
            sqlx::Error::Database(db) => {
                // SQLSTATE class 28: invalid authorization specification (password, pg_hba.conf,
                // role does not exist, peer/ident mismatch).
                let refused = db.code().is_some_and(|code| code.starts_with("28"));
                if refused {
                    Self::Refused(db.message().to_string())
                } else {
                    Self::Other(db.message().to_string())
                }
            }
            // sqlx reports authentication methods it does not speak (e.g. GSSAPI) this way.
            sqlx::Error::Protocol(text) if text.to_lowercase().contains("authentication") => {
                Self::Refused(text.clone())
            }
            other => Self::Other(other.to_string()),
        }
    }

    /// The server's answer or the transport's error, for messages.
    pub fn detail(&self) -> &str {
        match self {
            Self::Unreachable(text) | Self::Refused(text) | Self::Other(text) => text,
        }
    }
}

/// What to do about a refused login, for every message that reports one.
pub const REFUSED_FIX: &str = "set DATABASE_URL with a password (e.g. \
     postgres://user:pass@host/db), or unset it to use the embedded server";

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        let (creds, host) = rest.rsplit_once('@')?;
        let user = creds.split(':').next().unwrap_or("");
        Some(format!("{scheme}://{user}@{host}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_only() {
        assert_eq!(
            redact("postgres://alice:s3cr@t@db.example:5432/app"),
            "postgres://alice@db.example:5432/app"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/postgres"),
            "postgres://postgres@127.0.0.1/postgres"
        );
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn io_errors_mean_nothing_answers() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            LoginFailure::of(&sqlx::Error::Io(refused)),
            LoginFailure::Unreachable(_)
        ));
        assert!(matches!(
            LoginFailure::of(&sqlx::Error::Protocol(
                "unsupported authentication method".into()
            )),
            LoginFailure::Refused(_)
        ));
        assert!(matches!(
            LoginFailure::of(&sqlx::Error::Protocol("garbage".into())),
            LoginFailure::Other(_)
        ));
    }
}
