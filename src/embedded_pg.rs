//! The "embedded default" PostgreSQL (README, Configuration).
//!
//! # The rule
//!
//! * `DATABASE_URL` set: use it and nothing else. A server that refuses the login or does not
//!   answer is [`EmbeddedError::LoginRefused`] / [`EmbeddedError::Unreachable`] (exit 2, with the
//!   fix), never a fallback.
//! * unset, and the server on `127.0.0.1:5432` lets user `postgres` in without a password: use
//!   `postgres://postgres@127.0.0.1:5432/stepwise`.
//! * unset, and nothing answers there, or it answers but refuses us (what a distribution's
//!   packages give: scram-sha-256 on TCP; a missing `pg_hba.conf` entry; no role `postgres`):
//!   start a private PostgreSQL from the machine's PostgreSQL binaries with its cluster under
//!   `$STEPWISE_HOME/pg` (`STEPWISE_HOME` defaults to `~/.stepwise`) on a free loopback port,
//!   and stop it on exit. With no binaries at all the error is [`EmbeddedError::NoBinaries`],
//!   whose [`EmbeddedError::exit_code`] is 2.
//!
//! The choice is logged in one INFO line naming the server and why. In every case the database
//! named in the URL is created when it is missing ([`ensure_database_exists`]).
//!
//! # Running as root
//!
//! `initdb` and `postgres` refuse to run as root. When the effective uid is 0 both are run as an
//! unprivileged account instead — the `postgres` system account when it exists (Debian's packages
//! create it together with the binaries), otherwise `nobody` — through
//! [`std::os::unix::process::CommandExt::uid`]/`gid`, which also drops the supplementary groups.
//! The cluster directory is then owned by that account (mode 0700).
//!
//! That account must be able to *reach* the cluster: every ancestor directory has to grant it
//! search (`x`) permission. The default `STEPWISE_HOME` of root is `/root/.stepwise`, and `/root`
//! is mode 0700, so `/root/.stepwise/pg` can not be used by `postgres`. What we do:
//!
//! 1. If the account can reach `$STEPWISE_HOME` (e.g. `STEPWISE_HOME=/srv/stepwise`, mode 0755),
//!    the cluster lives in `$STEPWISE_HOME/pg` itself, chowned to the account. No surprise.
//! 2. Otherwise the cluster lives in a directory outside the home that the account can reach:
//!    `/var/lib/stepwise/clusters/<hash>` (`<hash>` = first 16 hex digits of the SHA-256 of the
//!    canonical `STEPWISE_HOME`, so each home keeps its own cluster), falling back to
//!    `/var/tmp/stepwise-clusters/<hash>` when `/var/lib` is not writable. `$STEPWISE_HOME/pg` is
//!    then a symbolic link to it, so the user still finds the data where the contract says it
//!    is, and a file `stepwise-home` inside the cluster directory names the home that owns it.
//!    If the user later replaces the link by their own link, we follow it.
//!
//! Why not the alternatives: loosening `/root` (chmod or an ACL) changes the security of the
//! administrator's home behind their back; a user namespace needs kernel support that containers
//! often disable and makes the files owned by a uid that does not exist outside it; `/tmp` is
//! wiped at boot while this is durable data (`/var/lib` is the FHS place for persistent state of
//! a service; `/var/tmp` also survives reboots). The parent directories we create there are owned
//! by root and not writable by anyone else (checked, so another local user can not pre-create
//! them), and only the per-home directory belongs to the unprivileged account.
//!
//! # Lifetime, sharing and shutdown
//!
//! * A first start runs `initdb -U postgres --auth=trust`. Trust is safe because nobody but the
//!   owner can reach the server: it listens on no TCP address at all, only on its Unix socket,
//!   which lives in a private 0700 directory of the account that runs it (another local user
//!   cannot open it; before, the server also listened on `127.0.0.1`, where any local user could
//!   log in as `postgres`). Clients connect through that socket
//!   (`postgres://postgres@localhost:PORT/DB?host=SOCKET_DIR`).
//!   Later starts reuse the initialized cluster. `fsync`/`synchronous_commit` keep their
//!   (durable) defaults.
//! * The server is started as `postgres -D data -k run -h '' -p PORT` (the port only names the
//!   socket file, `.s.PGSQL.PORT`; it is one found free by binding `127.0.0.1:0`), in its own
//!   process group (a Ctrl-C in the terminal does not hit it; the
//!   CLI decides when to stop), with its output appended to `postgres.log` in the cluster directory.
//! * Two `stepwise` processes on one `STEPWISE_HOME`: starting is serialized by an exclusive
//!   `flock` on `stepwise.lock`; a running server is recognized from `data/postmaster.pid` (pid,
//!   port), checked to be a live process whose working directory is our data directory and to
//!   accept connections, and is then reused. Each user of the server holds a shared `flock` on
//!   `clients.lock`; on [`EmbeddedPostgres::shutdown`] (or drop) the server is stopped only when
//!   no other process holds that lock, so the last one out stops it. The kernel releases the locks
//!   of a process that crashed.
//! * A stale `postmaster.pid` (its pid is dead, or belongs to another process) is removed before
//!   starting.
//! * Stopping sends `SIGINT` (PostgreSQL's "fast" shutdown: clean, no recovery on the next start)
//!   to the postmaster and waits for it to remove `postmaster.pid`; after 60 s it escalates to
//!   `SIGQUIT` (immediate shutdown, recovered by WAL replay on the next start).
//! * If the process is killed without unwinding (SIGKILL, `std::process::exit`) the server keeps
//!   running and the next `stepwise` on that home reuses it. The CLI should therefore handle
//!   Ctrl-C and call [`EmbeddedPostgres::shutdown`] (or let the value drop).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tracing::{debug, info, warn};

use crate::db_login::{redact, LoginFailure};

/// The database `stepwise` uses when the URL is not given.
pub const DEFAULT_DATABASE: &str = "stepwise";
/// The URL used when `DATABASE_URL` is unset and something answers on 127.0.0.1:5432.
pub const LOCAL_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/stepwise";

/// How long one connection attempt may take before the server counts as not answering.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a starting server may take to accept connections (crash recovery included).
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long a fast shutdown may take before it escalates to an immediate one.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// Directories that may hold the cluster of a root-run stepwise whose home the unprivileged
/// account can not reach: (existing parent, components created below it).
const EXTERNAL_ROOTS: [(&str, &[&str]); 2] = [
    ("/var/lib", &["stepwise", "clusters"]),
    ("/var/tmp", &["stepwise-clusters"]),
];
/// Unix socket paths are limited to 107 bytes; keep a margin.
const MAX_SOCKET_PATH: usize = 100;

/// Where `stepwise` keeps its data: the database URL, and the embedded server when one was
/// started. Keep `embedded` alive for as long as the URL is used.
#[derive(Debug)]
pub struct DatabaseTarget {
    pub url: String,
    pub embedded: Option<EmbeddedPostgres>,
    /// Which server this is and why it was chosen, for messages.
    pub why: String,
}

/// Failures of resolving or running the embedded PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "found no PostgreSQL binaries (initdb and postgres) to start the private PostgreSQL \
         server that stepwise uses when DATABASE_URL is unset and nothing answers on \
         127.0.0.1:5432 (looked in: {searched}). Install PostgreSQL (e.g. `apt-get install postgresql` on Debian/Ubuntu, \
         `dnf install postgresql-server` on Fedora, `brew install postgresql` on macOS) \
         or set DATABASE_URL to a PostgreSQL server you already run"
    )]
    NoBinaries { searched: String },

    #[error("cannot tell where STEPWISE_HOME is: neither STEPWISE_HOME nor HOME is set")]
    NoHome,

    #[error(
        "running as root, but PostgreSQL refuses to run as root and neither a `postgres` nor a \
         `nobody` account exists to run it as; create one or set DATABASE_URL"
    )]
    NoAccount,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("{0}")]
    Layout(String),

    #[error(
        "the embedded cluster in {} was created by PostgreSQL {cluster}, but the installed \
         binaries are {available}; install PostgreSQL {cluster} or move that directory away",
        data_dir.display()
    )]
    VersionMismatch {
        data_dir: PathBuf,
        cluster: String,
        available: String,
    },

    #[error("initdb failed ({status}):\n{output}")]
    InitDb { status: String, output: String },

    #[error("the embedded PostgreSQL did not start: {reason}\nlast lines of {}:\n{tail}", log.display())]
    StartFailed {
        reason: String,
        log: PathBuf,
        tail: String,
    },

    #[error("stopping the embedded PostgreSQL: {0}")]
    Stop(String),

    #[error("invalid database URL: {0}")]
    InvalidUrl(String),

    #[error(
        "PostgreSQL at {url} refused the login: {answer}\n  fix: {}",
        crate::db_login::REFUSED_FIX
    )]
    LoginRefused { url: String, answer: String },

    #[error(
        "cannot reach PostgreSQL at {url}: {answer}\n  fix: start that server or correct \
         DATABASE_URL, or unset DATABASE_URL to use the embedded server"
    )]
    Unreachable { url: String, answer: String },

    #[error("{context}: {source}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
}

impl EmbeddedError {
    /// The process exit code for this error: 2 for what the user must configure (PostgreSQL
    /// not installed, a server that refuses us or does not answer), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            EmbeddedError::NoBinaries { .. }
            | EmbeddedError::LoginRefused { .. }
            | EmbeddedError::Unreachable { .. } => 2,
            _ => 1,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

// ---------------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------------

/// Resolves the database by the rule above (database `stepwise`, embedded cluster under
/// `$STEPWISE_HOME`) and creates it if it is missing.
pub async fn resolve_database() -> Result<DatabaseTarget, EmbeddedError> {
    resolve_database_with(None, DEFAULT_DATABASE).await
}

/// The same rule for database `database` on the default or embedded server, with the embedded
/// cluster under `home` (default `$STEPWISE_HOME`). `DATABASE_URL` is used as it is.
pub async fn resolve_database_with(
    home: Option<&Path>,
    database: &str,
) -> Result<DatabaseTarget, EmbeddedError> {
    if let Some(url) = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        debug!(url = %redact(&url), "using DATABASE_URL");
        // Through a transaction pooler the database is made over the direct connection.
        let direct = match crate::db_urls::listen_url_from_env() {
            Ok(Some(listen))
                if crate::db_urls::pooling_from_env()
                    .is_ok_and(|p| p == stepwise_engine::Pooling::Transaction) =>
            {
                listen
            }
            _ => url.clone(),
        };
        // A URL of several hosts (a primary and its standbys) names a database that exists.
        if !stepwise_engine::store::multi_host::is_multi_host(&direct) {
            ensure_database_exists(&direct).await?;
        }
        return Ok(DatabaseTarget {
            url,
            embedded: None,
            why: "DATABASE_URL is set".to_owned(),
        });
    }
    let why = match default_server(database).await? {
        DefaultServer::LetsUsIn(url) => {
            let why = "the server on 127.0.0.1:5432 as user postgres: DATABASE_URL is unset and \
                       that server lets us in";
            info!("using {why}");
            return Ok(DatabaseTarget {
                url,
                embedded: None,
                why: why.to_owned(),
            });
        }
        DefaultServer::Refuses(answer) => {
            format!("the server on 127.0.0.1:5432 refuses user postgres ({answer})")
        }
        DefaultServer::Silent => "nothing answers on 127.0.0.1:5432".to_owned(),
    };
    let home = match home {
        Some(home) => home.to_path_buf(),
        None => stepwise_home()?,
    };
    let embedded = EmbeddedPostgres::start(&home).await?;
    let why = format!(
        "the embedded PostgreSQL on its private socket {}/.s.PGSQL.{} (cluster in {}): \
         DATABASE_URL is unset and {why}",
        embedded.socket_dir().display(),
        embedded.port(),
        embedded.cluster_dir().display()
    );
    info!("using {why}");
    let url = embedded.url(database);
    ensure_database_exists(&url).await?;
    Ok(DatabaseTarget {
        url,
        embedded: Some(embedded),
        why,
    })
}

/// What the default server (127.0.0.1:5432, user `postgres`, no password) makes of us.
enum DefaultServer {
    /// It let us in; the URL of the wanted database there (created if missing).
    LetsUsIn(String),
    /// It answered and refused the login, with its answer.
    Refuses(String),
    /// Nothing answers there.
    Silent,
}

async fn default_server(database: &str) -> Result<DefaultServer, EmbeddedError> {
    if !answers_tcp(5432).await {
        return Ok(DefaultServer::Silent);
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        encode_path_segment(database)
    );
    match ensure_database_exists(&url).await {
        Ok(()) => Ok(DefaultServer::LetsUsIn(url)),
        Err(EmbeddedError::LoginRefused { answer, .. }) => Ok(DefaultServer::Refuses(answer)),
        // It went away between the probe and the login.
        Err(EmbeddedError::Unreachable { .. }) => Ok(DefaultServer::Silent),
        Err(EmbeddedError::Database { context, source }) => Err(EmbeddedError::Database {
            context: format!(
                "{context} (DATABASE_URL is unset and the server on 127.0.0.1:5432 lets user \
                 postgres in; set DATABASE_URL to choose the server)"
            ),
            source,
        }),
        Err(other) => Err(other),
    }
}

/// `$STEPWISE_HOME`, or `~/.stepwise`.
pub fn stepwise_home() -> Result<PathBuf, EmbeddedError> {
    if let Some(home) = std::env::var_os("STEPWISE_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".stepwise"))
        .ok_or(EmbeddedError::NoHome)
}

async fn answers_tcp(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await,
        Ok(Ok(_))
    )
}

/// Connects once, giving up after [`CONNECT_DEADLINE`] (a port that accepts but never speaks
/// PostgreSQL must not hang every command).
async fn connect(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(CONNECT_DEADLINE, PgConnection::connect_with(options)).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {} s", CONNECT_DEADLINE.as_secs()),
        ))),
    }
}

/// The error of a failed login to `url`: refused and unreachable servers get their own
/// variants (exit 2, with the fix), anything else keeps sqlx's error under `context`.
fn login_error(url: &str, context: String, source: sqlx::Error) -> EmbeddedError {
    match LoginFailure::of(&source) {
        LoginFailure::Refused(answer) => EmbeddedError::LoginRefused {
            url: redact(url),
            answer,
        },
        LoginFailure::Unreachable(answer) => EmbeddedError::Unreachable {
            url: redact(url),
            answer,
        },
        LoginFailure::Other(_) => EmbeddedError::Database { context, source },
    }
}

/// Creates the database named in `url` when it does not exist yet, by connecting to the
/// `postgres` maintenance database of the same server. Tolerates another process creating it at
/// the same time.
pub async fn ensure_database_exists(url: &str) -> Result<(), EmbeddedError> {
    let target =
        PgConnectOptions::from_str(url).map_err(|e| EmbeddedError::InvalidUrl(e.to_string()))?;
    let Some(db) = target.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let server = format!("{}:{}", target.get_host(), target.get_port());
    let maintenance = target.clone().database("postgres");
    let mut conn = match connect(&maintenance).await {
        Ok(conn) => conn,
        Err(maintenance_err) => {
            // Without access to `postgres` the database may still exist and be usable.
            if let Ok(conn) = connect(&target).await {
                let _ = conn.close().await;
                return Ok(());
            }
            let context = format!(
                "connecting to PostgreSQL at {server} as {}",
                target.get_username()
            );
            return Err(login_error(url, context, maintenance_err));
        }
    };
    let result = create_if_missing(&mut conn, &db).await;
    let _ = conn.close().await;
    result.map_err(|source| EmbeddedError::Database {
        context: format!("creating database {db:?} on {server}"),
        source,
    })
}

async fn create_if_missing(conn: &mut PgConnection, db: &str) -> Result<(), sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
            .bind(db)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(());
    }
    let statement = format!("CREATE DATABASE {}", quote_ident(db));
    match sqlx::raw_sql(&statement).execute(&mut *conn).await {
        Ok(_) => {
            info!(database = db, "created database");
            Ok(())
        }
        Err(e) if is_duplicate_database(&e) => {
            debug!(database = db, "database was created concurrently");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn is_duplicate_database(e: &sqlx::Error) -> bool {
    // 42P04 duplicate_database; 23505 unique_violation on pg_database's name index when two
    // CREATE DATABASE race past the existence check.
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "42P04" || code == "23505")
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct PgBinaries {
    dir: PathBuf,
    /// e.g. `15.14`
    version: String,
    /// e.g. `15`, or `9.6` for old versions: what `PG_VERSION` of a cluster contains.
    major: String,
}

impl PgBinaries {
    fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }
    fn postgres(&self) -> PathBuf {
        self.dir.join("postgres")
    }
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dir.is_empty() {
                dirs.push(PathBuf::from(dir));
            }
        }
    }
    // Debian/Ubuntu, RHEL (PGDG), Homebrew, source installs.
    let scans: [(&str, &str); 4] = [
        ("/usr/lib/postgresql", ""),
        ("/usr", "pgsql-"),
        ("/opt/homebrew/opt", "postgresql"),
        ("/usr/local/opt", "postgresql"),
    ];
    for (root, prefix) in scans {
        if let Ok(entries) = fs::read_dir(root) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path().join("bin"))
                .collect();
            found.sort();
            dirs.extend(found);
        }
    }
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Parses `postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)` into (`15.14`, `15`).
fn parse_version(output: &str) -> Option<(String, String)> {
    let rest = output.split(')').nth(1)?.trim();
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = version.split('.');
    let first: u32 = parts.next()?.parse().ok()?;
    let major = if first >= 10 {
        first.to_string()
    } else {
        format!("{first}.{}", parts.next()?)
    };
    Some((version, major))
}

fn major_key(major: &str) -> (u32, u32) {
    let mut parts = major.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Every distinct directory holding both `initdb` and `postgres`, in discovery order, plus the
/// list of places looked at (for the error message).
fn find_binaries() -> (Vec<PgBinaries>, Vec<PathBuf>) {
    let searched = candidate_dirs();
    let mut found: Vec<PgBinaries> = Vec::new();
    for dir in &searched {
        let initdb = dir.join("initdb");
        if !is_executable(&initdb) {
            continue;
        }
        // Resolve links such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb.
        let Some(real_dir) = fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        else {
            continue;
        };
        if found.iter().any(|b| b.dir == real_dir) || !is_executable(&real_dir.join("postgres")) {
            continue;
        }
        let Ok(out) = std::process::Command::new(real_dir.join("postgres"))
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let Some((version, major)) = parse_version(&text) else {
            debug!(dir = %real_dir.display(), output = %text.trim(), "unrecognized postgres --version");
            continue;
        };
        found.push(PgBinaries {
            dir: real_dir,
            version,
            major,
        });
    }
    (found, searched)
}

/// Picks the binaries matching an existing cluster's version, else the highest version.
fn choose_binaries(
    found: &[PgBinaries],
    cluster_major: Option<&str>,
    data_dir: &Path,
) -> Result<PgBinaries, EmbeddedError> {
    if let Some(major) = cluster_major {
        return found
            .iter()
            .find(|b| b.major == major)
            .cloned()
            .ok_or_else(|| EmbeddedError::VersionMismatch {
                data_dir: data_dir.to_path_buf(),
                cluster: major.to_owned(),
                available: found
                    .iter()
                    .map(|b| format!("{} ({})", b.version, b.dir.display()))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
    }
    let mut best: Option<&PgBinaries> = None;
    for b in found {
        if best.is_none_or(|cur| major_key(&b.major) > major_key(&cur.major)) {
            best = Some(b);
        }
    }
    best.cloned().ok_or_else(|| EmbeddedError::NoBinaries {
        searched: String::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Accounts and directory layout
// ---------------------------------------------------------------------------------------------

/// The unprivileged account PostgreSQL runs as when stepwise runs as root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

fn lookup_run_as() -> Result<Option<RunAs>, EmbeddedError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        match User::from_name(name) {
            Ok(Some(user)) if user.uid.as_raw() != 0 => {
                return Ok(Some(RunAs {
                    name: user.name,
                    uid: user.uid.as_raw(),
                    gid: user.gid.as_raw(),
                }))
            }
            Ok(_) => {}
            Err(e) => debug!(account = name, error = %e, "account lookup failed"),
        }
    }
    Err(EmbeddedError::NoAccount)
}

/// Whether `account` may traverse every directory from `/` down to `path` (inclusive), judging
/// by the mode bits (the account runs with its primary group only).
fn traversable_by(path: &Path, account: &RunAs) -> io::Result<bool> {
    for dir in path.ancestors() {
        let meta = fs::metadata(dir)?;
        let mode = meta.mode();
        let ok = if meta.uid() == account.uid {
            mode & 0o100 != 0
        } else if meta.gid() == account.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Creates `dir` (mode 0700) if missing, makes it owned by the account that runs PostgreSQL and
/// private to it.
fn ensure_private_dir(dir: &Path, run_as: Option<&RunAs>) -> Result<(), EmbeddedError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
    }
    let meta = fs::metadata(dir).map_err(io_err(format!("inspecting {}", dir.display())))?;
    if let Some(account) = run_as {
        if meta.uid() != account.uid || meta.gid() != account.gid {
            std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid)).map_err(io_err(
                format!("giving {} to the {} account", dir.display(), account.name),
            ))?;
        }
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("making {} private", dir.display())))?;
    }
    Ok(())
}

/// Creates `parent/components...` owned by root, mode 0755, and checks that no one but root can
/// write them (so another local user can not have planted them).
fn ensure_root_dir_chain(parent: &Path, components: &[&str]) -> io::Result<PathBuf> {
    let mut dir = parent.to_path_buf();
    for component in components {
        dir.push(component);
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = fs::symlink_metadata(&dir)?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(io::Error::other(format!(
                "{} is not a directory owned by root and writable only by it",
                dir.display()
            )));
        }
    }
    Ok(dir)
}

fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The files of one embedded cluster.
#[derive(Debug, Clone)]
struct Layout {
    /// Directory owned by the account running PostgreSQL (`$STEPWISE_HOME/pg` or where it links).
    base: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    start_lock: PathBuf,
    clients_lock: PathBuf,
    run_as: Option<RunAs>,
}

fn prepare_layout(home: &Path, run_as: Option<RunAs>) -> Result<Layout, EmbeddedError> {
    fs::create_dir_all(home).map_err(io_err(format!("creating {}", home.display())))?;
    let home = fs::canonicalize(home).map_err(io_err(format!("resolving {}", home.display())))?;
    let pg = home.join("pg");
    let base = match &run_as {
        None => {
            ensure_private_dir(&pg, None)?;
            fs::canonicalize(&pg).map_err(io_err(format!("resolving {}", pg.display())))?
        }
        Some(account) => root_base(&home, &pg, account)?,
    };
    ensure_private_dir(&base, run_as.as_ref())?;
    let data = base.join("data");
    let mut socket_dir = base.join("run");
    if socket_dir.join(".s.PGSQL.65535").as_os_str().len() > MAX_SOCKET_PATH {
        socket_dir = std::env::temp_dir().join(format!(
            "stepwise-pg-{}",
            short_hash(base.as_os_str().as_encoded_bytes())
        ));
    }
    ensure_private_dir(&socket_dir, run_as.as_ref())?;
    if let Some(account) = &run_as {
        let owner = fs::metadata(&socket_dir)
            .map_err(io_err(format!("inspecting {}", socket_dir.display())))?
            .uid();
        if owner != account.uid {
            return Err(EmbeddedError::Layout(format!(
                "socket directory {} is not owned by {}",
                socket_dir.display(),
                account.name
            )));
        }
    }
    Ok(Layout {
        log: base.join("postgres.log"),
        start_lock: base.join("stepwise.lock"),
        clients_lock: base.join("clients.lock"),
        data,
        socket_dir,
        base,
        run_as,
    })
}

/// Chooses the cluster directory of a root-run stepwise (see the module documentation).
fn root_base(home: &Path, pg: &Path, account: &RunAs) -> Result<PathBuf, EmbeddedError> {
    let unreachable = |dir: &Path| {
        EmbeddedError::Layout(format!(
            "{} is not reachable by the `{}` account that runs PostgreSQL (a parent directory \
             denies it search permission); point {} elsewhere or set DATABASE_URL",
            dir.display(),
            account.name,
            pg.display()
        ))
    };
    match fs::symlink_metadata(pg) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = fs::read_link(pg).map_err(io_err(format!("reading {}", pg.display())))?;
            let target = home.join(target);
            if !target.exists() {
                warn!(link = %pg.display(), target = %target.display(),
                      "the embedded cluster directory is missing; creating a new cluster");
                fs::create_dir_all(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
            }
            let target = fs::canonicalize(&target)
                .map_err(io_err(format!("resolving {}", target.display())))?;
            let parent = target.parent().unwrap_or(Path::new("/"));
            if !traversable_by(parent, account)
                .map_err(io_err(format!("inspecting {}", parent.display())))?
            {
                return Err(unreachable(&target));
            }
            return Ok(target);
        }
        Ok(meta) if meta.is_dir() => {
            if traversable_by(home, account)
                .map_err(io_err(format!("inspecting {}", home.display())))?
            {
                return Ok(pg.to_path_buf());
            }
            if pg.join("data").join("PG_VERSION").exists() {
                return Err(unreachable(pg));
            }
            // An empty leftover directory: replace it by the link below.
            fs::remove_dir(pg).map_err(|_| {
                EmbeddedError::Layout(format!(
                    "{} exists but the `{}` account that runs PostgreSQL can not reach it, and it \
                     is not empty; move it away (stepwise then keeps the cluster in /var/lib/stepwise \
                     and links it there) or set DATABASE_URL",
                    pg.display(),
                    account.name
                ))
            })?;
        }
        Ok(_) => {
            return Err(EmbeddedError::Layout(format!(
                "{} exists and is not a directory",
                pg.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if traversable_by(home, account)
                .map_err(io_err(format!("inspecting {}", home.display())))?
            {
                return Ok(pg.to_path_buf());
            }
        }
        Err(e) => return Err(io_err(format!("inspecting {}", pg.display()))(e)),
    }

    // The home is out of the account's reach: keep the cluster outside and link it.
    let hash = short_hash(home.as_os_str().as_encoded_bytes());
    let mut last_error = String::new();
    for (parent, components) in EXTERNAL_ROOTS {
        let root = match ensure_root_dir_chain(Path::new(parent), components) {
            Ok(root) => root,
            Err(e) => {
                debug!(parent, error = %e, "cannot use this place for the embedded cluster");
                last_error = format!("{parent}: {e}");
                continue;
            }
        };
        let target = root.join(&hash);
        ensure_private_dir(&target, Some(account))?;
        if !traversable_by(&target, account)
            .map_err(io_err(format!("inspecting {}", target.display())))?
        {
            last_error = format!("{} is not reachable by {}", target.display(), account.name);
            continue;
        }
        let marker = target.join("stepwise-home");
        fs::write(&marker, format!("{}\n", home.display()))
            .map_err(io_err(format!("writing {}", marker.display())))?;
        match std::os::unix::fs::symlink(&target, pg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Another stepwise created the link at the same time.
                if fs::read_link(pg).ok().as_deref() != Some(target.as_path()) {
                    return Err(EmbeddedError::Layout(format!(
                        "{} appeared while preparing it; run again",
                        pg.display()
                    )));
                }
            }
            Err(e) => return Err(io_err(format!("linking {}", pg.display()))(e)),
        }
        info!(
            cluster = %target.display(),
            link = %pg.display(),
            account = %account.name,
            "the home is not reachable by the unprivileged PostgreSQL account; the cluster lives \
             outside it and is linked from the home"
        );
        return Ok(target);
    }
    Err(EmbeddedError::Layout(format!(
        "no place for the embedded cluster: {} is not reachable by the `{}` account and none of \
         /var/lib/stepwise, /var/tmp/stepwise-clusters is usable ({last_error}); set \
         STEPWISE_HOME to a directory it can reach, or DATABASE_URL",
        home.display(),
        account.name
    )))
}

// ---------------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------------

fn open_lock_file(path: &Path) -> Result<File, EmbeddedError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))
}

fn flock_err(path: &Path, errno: Errno) -> EmbeddedError {
    EmbeddedError::Io {
        context: format!("locking {}", path.display()),
        source: io::Error::from(errno),
    }
}

/// Blocking exclusive lock (use from blocking contexts).
fn lock_exclusive_blocking(path: &Path) -> Result<Flock<File>, EmbeddedError> {
    let file = open_lock_file(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, Errno::EWOULDBLOCK)) => {
            info!("waiting for another stepwise process using the embedded PostgreSQL");
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| flock_err(path, e))
        }
        Err((_, e)) => Err(flock_err(path, e)),
    }
}

async fn lock_exclusive(path: &Path) -> Result<Flock<File>, EmbeddedError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || lock_exclusive_blocking(&path))
        .await
        .map_err(|e| EmbeddedError::Io {
            context: "waiting for the start lock".into(),
            source: io::Error::other(e),
        })?
}

// ---------------------------------------------------------------------------------------------
// postmaster.pid
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct PidFile {
    pid: i32,
    port: u16,
}

/// Line 1 is the postmaster's pid, line 4 its port.
fn parse_pid_file(text: &str) -> Option<PidFile> {
    let lines: Vec<&str> = text.lines().collect();
    let pid: i32 = lines.first()?.trim().parse().ok()?;
    let port: u16 = lines.get(3)?.trim().parse().ok()?;
    (pid > 0).then_some(PidFile { pid, port })
}

fn read_pid_file(data: &Path) -> Option<PidFile> {
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| parse_pid_file(&t))
}

/// Whether `pid` is a running process (a zombie, exited but not yet reaped, is not).
fn process_alive(pid: i32) -> bool {
    if pid <= 0 || matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => true,
    }
}

/// Whether `pid` is a live postmaster of `data`: a live process named `postgres` whose working
/// directory is the data directory. What /proc does not tell is given the benefit of the doubt
/// (never remove the `postmaster.pid` of a live server).
fn is_postmaster_of(pid: i32, data: &Path) -> bool {
    if !process_alive(pid) {
        return false;
    }
    if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
        let comm = comm.trim();
        if !(comm.starts_with("postgres") || comm.starts_with("postmaster")) {
            return false;
        }
    }
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => {
            let data = fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
            cwd == data
        }
        Err(_) => true,
    }
}

fn connect_options(socket_dir: &Path, port: u16, db: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .socket(socket_dir)
        .port(port)
        .username("postgres")
        .database(db)
}

/// Whether a PostgreSQL server on `port` accepts a connection as `postgres`.
async fn accepts_connections(socket_dir: &Path, port: u16) -> bool {
    let options = connect_options(socket_dir, port, "postgres");
    match tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            true
        }
        _ => false,
    }
}

/// A server already running on this cluster (another stepwise started it): its port, once it
/// accepts connections. Removes a stale `postmaster.pid`.
async fn running_server(layout: &Layout) -> Result<Option<PidFile>, EmbeddedError> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let Some(pid_file) = read_pid_file(&layout.data) else {
            let path = layout.data.join("postmaster.pid");
            if path.exists() {
                warn!(file = %path.display(), "removing an unreadable postmaster.pid");
                fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
            }
            return Ok(None);
        };
        if !is_postmaster_of(pid_file.pid, &layout.data) {
            let path = layout.data.join("postmaster.pid");
            warn!(pid = pid_file.pid, file = %path.display(),
                  "removing a stale postmaster.pid left by an earlier run");
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing {}", path.display()))(e)),
            }
            return Ok(None);
        }
        if accepts_connections(&layout.socket_dir, pid_file.port).await {
            return Ok(Some(pid_file));
        }
        if Instant::now() > deadline {
            return Err(EmbeddedError::StartFailed {
                reason: format!(
                    "a postmaster (pid {}) runs on {} but does not accept connections on port {}",
                    pid_file.pid,
                    layout.data.display(),
                    pid_file.port
                ),
                log: layout.log.clone(),
                tail: log_tail(&layout.log, 0),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// initdb and postgres
// ---------------------------------------------------------------------------------------------

fn cluster_version(data: &Path) -> Option<String> {
    fs::read_to_string(data.join("PG_VERSION"))
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

async fn init_cluster(layout: &Layout, bin: &PgBinaries) -> Result<(), EmbeddedError> {
    if layout.data.exists() {
        // Left by an initdb that was interrupted: it holds no cluster.
        warn!(dir = %layout.data.display(), "removing an uninitialized data directory");
        fs::remove_dir_all(&layout.data)
            .map_err(io_err(format!("removing {}", layout.data.display())))?;
    }
    info!(version = %bin.version, data = %layout.data.display(), "initializing the embedded PostgreSQL cluster");
    let mut cmd = tokio::process::Command::new(bin.initdb());
    cmd.arg("-D")
        .arg(&layout.data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .current_dir(&layout.base)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(account) = &layout.run_as {
        cmd.uid(account.uid).gid(account.gid);
    }
    let out = cmd
        .output()
        .await
        .map_err(io_err(format!("running {}", bin.initdb().display())))?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(EmbeddedError::InitDb {
            status: out.status.to_string(),
            output: output.trim().to_owned(),
        });
    }
    Ok(())
}

/// The last lines of the log written from `offset` on.
fn log_tail(log: &Path, offset: u64) -> String {
    const MAX_BYTES: u64 = 8 * 1024;
    const MAX_LINES: usize = 20;
    let Ok(mut file) = File::open(log) else {
        return "(no log)".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(len.saturating_sub(MAX_BYTES));
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return "(unreadable log)".into();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(MAX_LINES)..].join("\n")
}

/// Keeps the log from growing without bound: past 8 MiB it moves to `postgres.log.1`.
fn rotate_log(log: &Path) {
    if fs::metadata(log).is_ok_and(|m| m.len() > 8 * 1024 * 1024) {
        let _ = fs::rename(log, log.with_extension("log.1"));
    }
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(io_err("finding a free loopback port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("finding a free loopback port"))?
        .port();
    drop(listener);
    Ok(port)
}

enum Startup {
    Ready,
    Exited(String),
    TimedOut,
}

async fn wait_ready(
    child: &mut Child,
    socket_dir: &Path,
    port: u16,
) -> Result<Startup, EmbeddedError> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_err("watching the postgres process"))?
        {
            return Ok(Startup::Exited(status.to_string()));
        }
        if accepts_connections(socket_dir, port).await {
            return Ok(Startup::Ready);
        }
        if Instant::now() > deadline {
            return Ok(Startup::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_postgres(layout: &Layout, bin: &PgBinaries, port: u16) -> Result<Child, EmbeddedError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&layout.log)
        .map_err(io_err(format!("opening {}", layout.log.display())))?;
    let log_err = log
        .try_clone()
        .map_err(io_err(format!("opening {}", layout.log.display())))?;
    let mut cmd = std::process::Command::new(bin.postgres());
    cmd.arg("-D")
        .arg(&layout.data)
        .arg("-k")
        .arg(&layout.socket_dir)
        // No TCP address: only the private socket, so only its owner can connect.
        .args(["-h", "", "-p"])
        .arg(port.to_string())
        .current_dir(&layout.base)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C meant for stepwise does not stop a server that other
        // stepwise processes may share; stepwise stops it explicitly.
        .process_group(0);
    if let Some(account) = &layout.run_as {
        cmd.uid(account.uid).gid(account.gid);
    }
    cmd.spawn()
        .map_err(io_err(format!("running {}", bin.postgres().display())))
}

/// Starts the server and waits until it accepts connections; retries when the free port was
/// taken in between.
async fn start_server(layout: &Layout, bin: &PgBinaries) -> Result<(u16, Child), EmbeddedError> {
    rotate_log(&layout.log);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port()?;
        let offset = fs::metadata(&layout.log).map(|m| m.len()).unwrap_or(0);
        debug!(version = %bin.version, port, data = %layout.data.display(), "starting the embedded PostgreSQL");
        let mut child = spawn_postgres(layout, bin, port)?;
        let failure = match wait_ready(&mut child, &layout.socket_dir, port).await {
            Ok(Startup::Ready) => return Ok((port, child)),
            Ok(Startup::Exited(status)) => format!("postgres exited ({status})"),
            Ok(Startup::TimedOut) => format!(
                "postgres did not accept connections within {} s",
                START_DEADLINE.as_secs()
            ),
            Err(e) => e.to_string(),
        };
        // Make sure nothing is left running after a failed start.
        if matches!(child.try_wait(), Ok(None)) {
            let _ = stop_pid(child.id() as i32, &layout.data, Some(&mut child));
        }
        let tail = log_tail(&layout.log, offset);
        let port_taken = tail.contains("Address already in use") || tail.contains("could not bind");
        if port_taken && attempt < 3 {
            warn!(port, "the port was taken meanwhile; trying another one");
            continue;
        }
        return Err(EmbeddedError::StartFailed {
            reason: failure,
            log: layout.log.clone(),
            tail,
        });
    }
}

/// Sends `SIGINT` (fast shutdown) and waits for the postmaster to go; escalates to `SIGQUIT`.
fn stop_pid(pid: i32, data: &Path, mut child: Option<&mut Child>) -> Result<(), EmbeddedError> {
    let pid_file = data.join("postmaster.pid");
    let gone = |child: &mut Option<&mut Child>| -> bool {
        match child {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !process_alive(pid) || !pid_file.exists(),
        }
    };
    for (signal, deadline) in [
        (Signal::SIGINT, STOP_DEADLINE),
        (Signal::SIGQUIT, Duration::from_secs(10)),
    ] {
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(()),
            Err(e) => return Err(EmbeddedError::Stop(format!("signalling pid {pid}: {e}"))),
        }
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if gone(&mut child) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        warn!(pid, ?signal, "the embedded PostgreSQL did not stop in time");
    }
    Err(EmbeddedError::Stop(format!(
        "pid {pid} did not stop after SIGINT and SIGQUIT"
    )))
}

// ---------------------------------------------------------------------------------------------
// EmbeddedPostgres
// ---------------------------------------------------------------------------------------------

/// A private PostgreSQL server on a loopback port, for as long as this value lives.
pub struct EmbeddedPostgres {
    inner: Option<Inner>,
}

struct Inner {
    port: u16,
    version: String,
    layout: Layout,
    /// The server process, when this process started it.
    child: Option<Child>,
    /// Shared lock on `clients.lock`: tells other processes that this one uses the server.
    client_lock: Flock<File>,
}

impl fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Some(inner) => f
                .debug_struct("EmbeddedPostgres")
                .field("port", &inner.port)
                .field("version", &inner.version)
                .field("cluster_dir", &inner.layout.base)
                .field("started_here", &inner.child.is_some())
                .finish(),
            None => f.write_str("EmbeddedPostgres(stopped)"),
        }
    }
}

impl EmbeddedPostgres {
    /// Starts (or joins) the private server of the given `STEPWISE_HOME`, initializing its
    /// cluster on first use.
    pub async fn start(home: &Path) -> Result<Self, EmbeddedError> {
        let home = home.to_path_buf();
        let (found, searched) = tokio::task::spawn_blocking(find_binaries)
            .await
            .map_err(|e| EmbeddedError::Io {
                context: "looking for PostgreSQL binaries".into(),
                source: io::Error::other(e),
            })?;
        if found.is_empty() {
            let mut seen: Vec<String> = Vec::new();
            for dir in searched {
                let d = dir.display().to_string();
                if !seen.contains(&d) {
                    seen.push(d);
                }
            }
            return Err(EmbeddedError::NoBinaries {
                searched: seen.join(", "),
            });
        }
        let run_as = lookup_run_as()?;
        if let Some(account) = &run_as {
            debug!(account = %account.name, uid = account.uid, "running as root; PostgreSQL runs as an unprivileged account");
        }
        let layout = prepare_layout(&home, run_as)?;
        let start_lock = lock_exclusive(&layout.start_lock).await?;

        let cluster = cluster_version(&layout.data);
        let bin = choose_binaries(&found, cluster.as_deref(), &layout.data)?;
        if cluster.is_none() {
            init_cluster(&layout, &bin).await?;
        }
        let (port, child) = match running_server(&layout).await? {
            Some(pid_file) => {
                debug!(
                    port = pid_file.port,
                    pid = pid_file.pid,
                    "reusing the embedded PostgreSQL that another stepwise process started"
                );
                (pid_file.port, None)
            }
            None => {
                let (port, child) = start_server(&layout, &bin).await?;
                (port, Some(child))
            }
        };
        let clients = open_lock_file(&layout.clients_lock)?;
        // Stoppers take the exclusive lock only while holding the start lock, which we hold.
        let client_lock = Flock::lock(clients, FlockArg::LockSharedNonblock)
            .map_err(|(_, e)| flock_err(&layout.clients_lock, e))?;
        drop(start_lock);
        debug!(port, "the embedded PostgreSQL accepts connections");
        Ok(EmbeddedPostgres {
            inner: Some(Inner {
                port,
                version: bin.version,
                layout,
                child,
                client_lock,
            }),
        })
    }

    /// The URL of database `db` on this server, as the `postgres` superuser, through its
    /// private Unix socket (`host` names the socket directory; `localhost` is not used).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{}?host={}",
            self.port(),
            encode_path_segment(db),
            encode_path_segment(&self.socket_dir().to_string_lossy())
        )
    }

    /// The port that names the server's socket file (`.s.PGSQL.PORT`); nothing listens on it
    /// over TCP.
    pub fn port(&self) -> u16 {
        self.inner.as_ref().map_or(0, |i| i.port)
    }

    /// The private (0700) directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.inner
            .as_ref()
            .map_or(Path::new(""), |i| i.layout.socket_dir.as_path())
    }

    /// The directory holding the cluster, its log and locks (`$STEPWISE_HOME/pg`, or where that
    /// links to when run as root with an unreachable home).
    pub fn cluster_dir(&self) -> &Path {
        self.inner
            .as_ref()
            .map_or(Path::new(""), |i| i.layout.base.as_path())
    }

    /// The PostgreSQL data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        self.inner
            .as_ref()
            .map_or(Path::new(""), |i| i.layout.data.as_path())
    }

    /// Whether this process started the server (false when it joined a running one).
    pub fn started_here(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.child.is_some())
    }

    /// Leaves the server running after this process exits (`stepwise embedded-pg start`, used by
    /// `scripts/test`); [`stop_embedded`] stops it later.
    pub fn detach(mut self) {
        if let Some(inner) = self.inner.take() {
            // Dropping the child handle neither kills nor waits: the server lives on in its own
            // process group, and without our shared lock a later stop may take it down.
            drop(inner.client_lock);
            drop(inner.child);
        }
    }

    /// Leaves the server: stops it unless another stepwise process still uses it.
    pub async fn shutdown(mut self) -> Result<(), EmbeddedError> {
        let Some(inner) = self.inner.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || release(inner))
            .await
            .map_err(|e| EmbeddedError::Stop(format!("the stop task failed: {e}")))?
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if let Err(e) = release(inner) {
                warn!(error = %e, "stopping the embedded PostgreSQL on drop");
            }
        }
    }
}

/// Gives up this process's use of the server and stops it when no one else uses it.
fn release(inner: Inner) -> Result<(), EmbeddedError> {
    let Inner {
        port,
        layout,
        mut child,
        client_lock,
        ..
    } = inner;
    let start_lock = lock_exclusive_blocking(&layout.start_lock)?;
    drop(client_lock);
    let clients = open_lock_file(&layout.clients_lock)?;
    let last_user = match Flock::lock(clients, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Some(lock),
        Err((_, Errno::EWOULDBLOCK)) => None,
        Err((_, e)) => return Err(flock_err(&layout.clients_lock, e)),
    };
    if last_user.is_none() {
        info!(
            port,
            "leaving the embedded PostgreSQL running: another stepwise process uses it"
        );
        drop(start_lock);
        if let Some(mut server) = child {
            // Whoever stops it later, reap our child then so that it does not linger as a zombie.
            std::thread::spawn(move || {
                let _ = server.wait();
            });
        }
        return Ok(());
    }
    let result = match (&mut child, read_pid_file(&layout.data)) {
        (Some(c), _) => stop_pid(c.id() as i32, &layout.data, Some(c)),
        (None, Some(pid_file)) if is_postmaster_of(pid_file.pid, &layout.data) => {
            stop_pid(pid_file.pid, &layout.data, None)
        }
        (None, _) => Ok(()),
    };
    if result.is_ok() {
        info!(port, "stopped the embedded PostgreSQL");
    }
    drop(last_user);
    drop(start_lock);
    result
}

/// Stops the embedded server of `home` if one runs and no stepwise process uses it (the
/// counterpart of [`EmbeddedPostgres::detach`]). Returns whether a server was stopped.
pub async fn stop_embedded(home: &Path) -> Result<bool, EmbeddedError> {
    let home = home.to_path_buf();
    tokio::task::spawn_blocking(move || stop_embedded_blocking(&home))
        .await
        .map_err(|e| EmbeddedError::Stop(format!("the stop task failed: {e}")))?
}

fn stop_embedded_blocking(home: &Path) -> Result<bool, EmbeddedError> {
    if fs::symlink_metadata(home.join("pg")).is_err() {
        return Ok(false);
    }
    let layout = prepare_layout(home, lookup_run_as()?)?;
    let start_lock = lock_exclusive_blocking(&layout.start_lock)?;
    let clients = open_lock_file(&layout.clients_lock)?;
    let last_user = match Flock::lock(clients, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            info!("leaving the embedded PostgreSQL running: a stepwise process uses it");
            return Ok(false);
        }
        Err((_, e)) => return Err(flock_err(&layout.clients_lock, e)),
    };
    let stopped = match read_pid_file(&layout.data) {
        Some(pid_file) if is_postmaster_of(pid_file.pid, &layout.data) => {
            stop_pid(pid_file.pid, &layout.data, None)?;
            true
        }
        _ => false,
    };
    drop(last_user);
    drop(start_lock);
    Ok(stopped)
}

fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n"),
            Some(("15.14".into(), "15".into()))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 9.6.24"),
            Some(("9.6.24".into(), "9.6".into()))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta1"),
            Some(("17".into(), "17".into()))
        );
        assert_eq!(parse_version("garbage"), None);
        assert!(major_key("16") > major_key("9.6"));
    }

    #[test]
    fn parses_pid_files() {
        let text = "1234\n/var/lib/x/data\n1700000000\n54321\n/run/x\n127.0.0.1\n  1 2\nready   \n";
        assert_eq!(
            parse_pid_file(text),
            Some(PidFile {
                pid: 1234,
                port: 54321
            })
        );
        assert_eq!(parse_pid_file("1234\n"), None);
        assert_eq!(parse_pid_file("-1\na\nb\n5432\n"), None);
    }

    #[test]
    fn chooses_binaries() {
        let b = |major: &str| PgBinaries {
            dir: PathBuf::from(format!("/pg/{major}")),
            version: format!("{major}.1"),
            major: major.into(),
        };
        let found = vec![b("9.6"), b("16"), b("15")];
        let data = Path::new("/d");
        assert_eq!(
            choose_binaries(&found, None, data).map(|b| b.major).ok(),
            Some("16".into())
        );
        assert_eq!(
            choose_binaries(&found, Some("15"), data)
                .map(|b| b.major)
                .ok(),
            Some("15".into())
        );
        assert!(matches!(
            choose_binaries(&found, Some("14"), data),
            Err(EmbeddedError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn exit_codes_and_messages() {
        let e = EmbeddedError::NoBinaries {
            searched: "/usr/lib/postgresql".into(),
        };
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(msg.contains("apt-get install postgresql"), "{msg}");
        assert!(msg.contains("DATABASE_URL"), "{msg}");
        assert_eq!(EmbeddedError::NoHome.exit_code(), 1);
    }

    #[test]
    fn quoting_and_encoding() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(encode_path_segment("step wise"), "step%20wise");
        assert_eq!(encode_path_segment("stepwise_test-1"), "stepwise_test-1");
    }

    #[test]
    fn traversal_follows_mode_bits() {
        let account = RunAs {
            name: "probe".into(),
            uid: 4_000_000,
            gid: 4_000_000,
        };
        let dir = std::env::temp_dir().join(format!("stepwise-trav-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(fs::create_dir(&dir).is_ok());
        assert!(fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).is_ok());
        assert_eq!(traversable_by(&dir, &account).ok(), Some(false));
        assert!(fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).is_ok());
        assert_eq!(traversable_by(&dir, &account).ok(), Some(true));
        let _ = fs::remove_dir_all(&dir);
    }
}
