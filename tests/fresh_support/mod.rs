//! A PostgreSQL server as a distribution installs it: scram-sha-256 only, with a password the
//! tests never give stepwise. Started from the machine's binaries on a free loopback port (as
//! the `postgres` account when run as root), stopped on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct ScramServer {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
    pub port: u16,
}

fn newest_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries under /usr/lib/postgresql")
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect("an initdb")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ScramServer {
    pub fn start() -> Self {
        let bindir = newest_bindir();
        let run_as = nix::unistd::geteuid().is_root().then(|| {
            let user = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("a postgres account to run PostgreSQL as");
            (user.uid.as_raw(), user.gid.as_raw())
        });
        let dir = tempfile::Builder::new()
            .prefix("stepwise-scram-")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let password = dir.path().join("password");
        fs::write(&password, format!("never-given-{}\n", std::process::id())).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&password, Some(uid), Some(gid)).unwrap();
        }
        let port = free_port();
        let server = Self {
            bindir,
            run_as,
            port,
            dir,
        };
        let data = server.dir.path().join("data");
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                password.as_os_str(),
            ],
        );
        let options = format!("-h 127.0.0.1 -p {port} -k {}", server.dir.path().display());
        let log = server.dir.path().join("log");
        server.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        );
        server
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let mut command = Command::new(self.bindir.join(tool));
        command.args(args).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL a new user writes first: right server, no password.
    pub fn url_without_password(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ScramServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut command = Command::new(self.bindir.join("pg_ctl"));
        command
            .args(["-m", "immediate", "-w", "stop", "-D"])
            .arg(&data)
            .current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let _ = command.output();
    }
}
