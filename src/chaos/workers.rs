//! The worker processes of a chaos run: `stepwise worker` children of this binary, killed,
//! stopped and restarted on purpose, and watched for any that die on their own.

use crate::exit::CliError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Worker {
    child: Child,
    id: String,
}

pub struct Pool {
    workers: Vec<Worker>,
    logs: PathBuf,
    lease: Duration,
    started: u32,
    /// Workers that exited without being killed or told to stop.
    pub unexpected_exits: u32,
    /// Deterministic choice of the next victim.
    turn: usize,
}

fn failed(context: &str, e: impl std::fmt::Display) -> CliError {
    CliError::failed(format!("{context}: {e}"))
}

impl Pool {
    pub fn new(logs: &Path, lease: Duration, size: usize) -> Result<Self, CliError> {
        let mut pool = Self {
            workers: Vec::new(),
            logs: logs.to_path_buf(),
            lease,
            started: 0,
            unexpected_exits: 0,
            turn: 0,
        };
        for _ in 0..size.max(1) {
            pool.spawn()?;
        }
        Ok(pool)
    }

    fn spawn(&mut self) -> Result<(), CliError> {
        self.started += 1;
        let id = format!("chaos-worker-{}", self.started);
        let log = std::fs::File::create(self.logs.join(format!("{id}.log")))
            .map_err(|e| failed("creating a worker log", e))?;
        let exe = std::env::current_exe().map_err(|e| failed("finding this binary", e))?;
        let child = Command::new(exe)
            .args([
                "worker",
                "--worker-id",
                &id,
                "--concurrency",
                "8",
                "--lease-ms",
                &self.lease.as_millis().to_string(),
                "--shutdown-grace-secs",
                "3",
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| failed("starting a worker", e))?;
        self.workers.push(Worker { child, id });
        Ok(())
    }

    /// Notes workers that exited on their own and replaces them.
    pub fn watch(&mut self) {
        let mut i = 0;
        while i < self.workers.len() {
            match self.workers[i].child.try_wait() {
                Ok(Some(status)) => {
                    let gone = self.workers.remove(i);
                    self.unexpected_exits += 1;
                    eprintln!(
                        "chaos: worker {} exited on its own ({status}); see its log",
                        gone.id
                    );
                    let _ = self.spawn();
                }
                _ => i += 1,
            }
        }
    }

    /// SIGKILLs one worker and starts a replacement. Returns whether one was killed.
    pub fn kill_one(&mut self) -> Result<bool, CliError> {
        if self.workers.is_empty() {
            return Ok(false);
        }
        self.turn = (self.turn + 1) % self.workers.len();
        let mut victim = self.workers.remove(self.turn);
        let _ = victim.child.kill();
        let _ = victim.child.wait();
        self.spawn()?;
        Ok(true)
    }

    /// SIGSTOPs one worker for `pause` (past its lease), then SIGCONTs it.
    pub async fn stop_one_for(&mut self, pause: Duration) -> Result<(), CliError> {
        let Some(worker) = self.workers.first() else {
            return Ok(());
        };
        let pid = Pid::from_raw(worker.child.id() as i32);
        kill(pid, Signal::SIGSTOP).map_err(|e| failed("SIGSTOP", e))?;
        tokio::time::sleep(pause).await;
        kill(pid, Signal::SIGCONT).map_err(|e| failed("SIGCONT", e))?;
        Ok(())
    }

    /// Stops every worker in turn with SIGTERM (a graceful stop), waiting for it to exit and
    /// starting its replacement before the next. Returns how many were restarted.
    pub async fn rolling_restart(&mut self) -> Result<u32, CliError> {
        let n = self.workers.len();
        for _ in 0..n {
            let mut old = self.workers.remove(0);
            let status = terminate(&mut old.child).await;
            if !status {
                self.unexpected_exits += 1;
                eprintln!("chaos: worker {} did not stop cleanly on SIGTERM", old.id);
            }
            self.spawn()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(n as u32)
    }

    /// Stops every worker with SIGTERM; returns the workers that exited without being killed
    /// over the whole run (a worker that fails its graceful stop counts too).
    pub async fn shutdown(mut self) -> u32 {
        self.watch();
        for mut worker in std::mem::take(&mut self.workers) {
            if !terminate(&mut worker.child).await {
                self.unexpected_exits += 1;
                eprintln!(
                    "chaos: worker {} did not stop cleanly on SIGTERM",
                    worker.id
                );
            }
        }
        self.unexpected_exits
    }
}

/// SIGTERM, then wait up to 20 s for a clean exit (SIGKILL after). Returns whether it exited
/// with status 0 in time.
async fn terminate(child: &mut Child) -> bool {
    let pid = Pid::from_raw(child.id() as i32);
    if kill(pid, Signal::SIGTERM).is_err() {
        return false;
    }
    for _ in 0..200 {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => return false,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Drop for Pool {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}
