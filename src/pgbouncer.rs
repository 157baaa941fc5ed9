//! A throwaway PgBouncer in front of one PostgreSQL server, for tests and drills
//! (docs/operations.md, "PgBouncer"): its own configuration in a new temporary directory, on a
//! free loopback port, stopped and removed on drop. The machine's PgBouncer service and
//! `/etc/pgbouncer` are left alone.
//!
//! It uses `pgbouncer` from `STEPWISE_PGBOUNCER`, else the `PATH`, else `/usr/sbin/pgbouncer`
//! (Debian's package). PgBouncer refuses to run as root, so as root it runs as the `postgres`
//! account.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why PgBouncer could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BouncerError {
    #[error(
        "pgbouncer was not found (looked at STEPWISE_PGBOUNCER, the PATH and /usr/sbin): \
         install it (Debian: apt-get install pgbouncer) or set STEPWISE_PGBOUNCER"
    )]
    NotInstalled,
    #[error("running as root needs the `postgres` account to run pgbouncer")]
    NoAccount,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pgbouncer did not accept connections on port {port} within 10 s; its log: {log}")]
    NotListening { port: u16, log: String },
}

/// How PgBouncer pools server connections.
#[derive(Debug, Clone, Copy)]
pub struct BouncerConfig {
    /// Server connections per database and user (`default_pool_size`).
    pub pool_size: u32,
    /// Client connections it accepts (`max_client_conn`).
    pub max_clients: u32,
}

/// A running PgBouncer in `pool_mode = transaction`; stopped and its directory removed on drop.
#[derive(Debug)]
pub struct Bouncer {
    dir: PathBuf,
    port: u16,
    child: Child,
}

/// The `pgbouncer` binary, if installed.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STEPWISE_PGBOUNCER") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()))
}

impl Bouncer {
    /// Starts PgBouncer in transaction-pooling mode in front of the PostgreSQL server at
    /// `host:port`, logging every client in as `user` there (`auth_type = any`: loopback only,
    /// for tests and drills).
    pub fn start(
        server_host: &str,
        server_port: u16,
        user: &str,
        config: BouncerConfig,
    ) -> Result<Self, BouncerError> {
        let binary = binary().ok_or(BouncerError::NotInstalled)?;
        let account = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(BouncerError::NoAccount)?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!(
            "stepwise-pgbouncer-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("finding a free port"))?
            .port();
        let log = dir.join("pgbouncer.log");
        let ini = format!(
            "[databases]\n\
             * = host={server_host} port={server_port} user={user}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             default_pool_size = {pool}\n\
             max_client_conn = {clients}\n\
             max_db_connections = {pool}\n\
             logfile = {log}\n\
             pidfile = {pid}\n",
            pool = config.pool_size,
            clients = config.max_clients,
            log = log.display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).map_err(io_err("writing pgbouncer.ini"))?;
        if let Some((uid, gid)) = account {
            for path in [&dir, &ini_path] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(io_err(format!("giving {} to postgres", path.display())))?;
            }
        }
        let mut command = Command::new(&binary);
        command
            .arg(&ini_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = account {
            command.uid(uid).gid(gid);
        }
        let child = command
            .spawn()
            .map_err(io_err(format!("starting {}", binary.display())))?;
        let bouncer = Self { dir, port, child };
        bouncer.wait_listening()?;
        Ok(bouncer)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://USER@127.0.0.1:PORT/DATABASE` through this PgBouncer.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }

    fn wait_listening(&self) -> Result<(), BouncerError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(BouncerError::NotListening {
            port: self.port,
            log: read_log(&self.log_path()),
        })
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BouncerError {
    let context = context.into();
    move |source| BouncerError::Io { context, source }
}
