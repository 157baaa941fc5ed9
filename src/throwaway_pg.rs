//! A throwaway PostgreSQL cluster that a test or `stepwise chaos` may restart at will: `initdb`
//! in a new temporary directory, a server on a free loopback port with `fsync=off`, stopped
//! and removed on drop. Restarting the machine's own server would disturb everything else that
//! uses it; this one belongs to the caller alone.
//!
//! It uses the machine's PostgreSQL binaries (`STEPWISE_PG_BIN`, else `pg_config --bindir`,
//! else the newest `/usr/lib/postgresql/*/bin`, Debian's layout). As root, `initdb` and
//! `postgres` refuse to run, so they run as the `postgres` account (which must exist, as the
//! distribution packages create it); otherwise as the current user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the cluster could not be made or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL's initdb was not found (looked at STEPWISE_PG_BIN, pg_config --bindir and \
         /usr/lib/postgresql/*/bin): install PostgreSQL or set STEPWISE_PG_BIN"
    )]
    NoBinaries,
    #[error("running as root needs the `postgres` account to run initdb and postgres")]
    NoAccount,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// How a running server is stopped (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Backends are terminated and the server shuts down cleanly.
    Fast,
    /// The server quits at once, as in a crash; the next start recovers from the WAL.
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// The cluster; stopped and deleted when dropped.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// (uid, gid) of the `postgres` account when running as root.
    account: Option<(u32, u32)>,
}

impl Cluster {
    /// Creates and starts a cluster in a new directory under the system's temporary directory.
    pub fn create() -> Result<Self, ClusterError> {
        let cluster = Self::empty()?;
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        )?;
        cluster.start()?;
        Ok(cluster)
    }

    /// A streaming standby of this cluster (docs/operations.md): `pg_basebackup -R` into a new
    /// directory, started on a port of its own; it follows this server until promoted.
    pub fn standby(&self) -> Result<Self, ClusterError> {
        let standby = Self::empty()?;
        let port = self.port.to_string();
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                &standby.data(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
            ],
        )?;
        standby.start()?;
        Ok(standby)
    }

    /// A new directory and a free port, nothing in them yet.
    fn empty() -> Result<Self, ClusterError> {
        let bin = bin_dir().ok_or(ClusterError::NoBinaries)?;
        let account = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(ClusterError::NoAccount)?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!(
            "stepwise-pg-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        if let Some((uid, gid)) = account {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io_err(format!("giving {} to postgres", dir.display())))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("finding a free port"))?
            .port();
        Ok(Self {
            dir,
            bin,
            port,
            account,
        })
    }

    /// The cluster's own directory (its data directory is `data` inside).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A base backup of this running cluster into `dest` (`pg_basebackup -X stream`, plain
    /// format), made by the cluster's account.
    pub fn base_backup(&self, dest: &Path) -> Result<(), ClusterError> {
        let port = self.port.to_string();
        let dest = dest.display().to_string();
        self.run(
            "pg_basebackup",
            &[
                "-D",
                &dest,
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
            ],
        )
    }

    /// A new cluster restored from the base backup in `backup` (left as it is): its files are
    /// copied into a new directory, `recovery.signal` and `settings` (postgresql.conf lines:
    /// `restore_command`, `recovery_target_*`) added, and the server started on a port of its
    /// own. It replays the archived WAL and is promoted at the target.
    pub fn restore(&self, backup: &Path, settings: &str) -> Result<Self, ClusterError> {
        let restored = Self::empty()?;
        let data = restored.data();
        let source = format!("{}/.", backup.display());
        let mut copy = restored.command_path(Path::new("/bin/cp"));
        let out = copy
            .args(["-a", &source, &data])
            .output()
            .map_err(io_err("copying the base backup"))?;
        if !out.status.success() {
            return Err(ClusterError::Failed {
                command: format!("cp -a {source} {data}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        restored.append_conf(settings)?;
        let signal = restored.dir.join("data").join("recovery.signal");
        std::fs::write(&signal, "").map_err(io_err("writing recovery.signal"))?;
        if let Some((uid, gid)) = restored.account {
            std::os::unix::fs::chown(&signal, Some(uid), Some(gid))
                .map_err(io_err("giving recovery.signal to postgres"))?;
        }
        restored.start()?;
        Ok(restored)
    }

    fn append_conf(&self, settings: &str) -> Result<(), ClusterError> {
        use std::io::Write;
        let path = self.dir.join("data").join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        writeln!(file, "{settings}").map_err(io_err(format!("writing {}", path.display())))
    }

    /// Appends `settings` and restarts the server (for settings such as `archive_mode`).
    pub fn configure_and_restart(&self, settings: &str) -> Result<(), ClusterError> {
        self.append_conf(settings)?;
        self.stop(StopMode::Fast)?;
        self.start()
    }

    /// Promotes a standby to a primary and waits until it accepts writes.
    pub fn promote(&self) -> Result<(), ClusterError> {
        self.run("pg_ctl", &["-D", &self.data(), "-w", "promote"])
    }

    /// Appends `settings` (postgresql.conf lines) to the configuration and reloads it.
    pub fn configure(&self, settings: &str) -> Result<(), ClusterError> {
        self.append_conf(settings)?;
        self.run("pg_ctl", &["-D", &self.data(), "reload"])
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), ClusterError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.log_path().display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
    }

    /// Stops the server and waits until it is down.
    pub fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", mode.as_str(), "-w", "stop"],
        )
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn command(&self, tool: &str) -> Command {
        self.command_path(&self.bin.join(tool))
    }

    fn command_path(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.account {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), ClusterError> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .map_err(io_err(format!("running {tool}")))?;
        if out.status.success() {
            return Ok(());
        }
        Err(ClusterError::Failed {
            command: format!("{tool} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

fn bin_dir() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("STEPWISE_PG_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| has_initdb(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, dir)| dir)
}
