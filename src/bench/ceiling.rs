//! PostgreSQL's own ceiling for durable steps (BENCHMARKS.md, "Method"): pgbench runs the
//! minimal durable step (advance a saga cursor + insert the step result, one commit; `sql/`
//! `step.sql` over `schema.sql`) and a variant with 16 sagas' steps per commit
//! (`step_batch16.sql`), on a scratch database, each the median of `runs` runs of `seconds`,
//! after a warm-up.
//!
//! - `L1(c)`: steps/s with one step per commit at `c` connections;
//! - `L1b(c)`: steps/s with 16 sagas' steps per commit.

use super::pg::{drop_database, recreate_database, with_database};
use super::BenchError;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tokio::process::Command;

const SCHEMA: &str = include_str!("sql/schema.sql");
const STEP: &str = include_str!("sql/step.sql");
const STEP_BATCH16: &str = include_str!("sql/step_batch16.sql");

/// The scratch database the ceiling runs in (dropped afterwards).
pub const LIMIT_DATABASE: &str = "stepwise_limit";

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub clients: usize,
    pub seconds: u64,
    pub runs: usize,
    pub l1_steps_per_s: f64,
    pub l1b_steps_per_s: f64,
    /// Every run, for judging the spread: steps/s.
    pub l1_runs: Vec<f64>,
    pub l1b_runs: Vec<f64>,
}

/// Measures L1 and L1b at `clients` connections. Needs `pgbench` on the PATH.
pub async fn measure(
    server_url: &str,
    clients: usize,
    seconds: u64,
    runs: usize,
) -> Result<Ceiling, BenchError> {
    let dir = std::env::temp_dir().join(format!("stepwise-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let step = write(&dir, "step.sql", STEP)?;
    let batch = write(&dir, "step_batch16.sql", STEP_BATCH16)?;
    recreate_database(server_url, LIMIT_DATABASE).await?;
    let url = with_database(server_url, LIMIT_DATABASE);
    let result = async {
        // Warm-up: the first runs on a fresh cluster are slow while WAL segments are created.
        reset_schema(&url).await?;
        pgbench(&url, &step, clients, seconds.min(5)).await?;
        let mut l1_runs = Vec::new();
        let mut l1b_runs = Vec::new();
        for _ in 0..runs.max(1) {
            reset_schema(&url).await?;
            l1_runs.push(pgbench(&url, &step, clients, seconds).await?);
        }
        for _ in 0..runs.max(1) {
            reset_schema(&url).await?;
            l1b_runs.push(pgbench(&url, &batch, clients, seconds).await? * 16.0);
        }
        Ok::<_, BenchError>(Ceiling {
            clients,
            seconds,
            runs: runs.max(1),
            l1_steps_per_s: median(&l1_runs),
            l1b_steps_per_s: median(&l1b_runs),
            l1_runs,
            l1b_runs,
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    drop_database(server_url, LIMIT_DATABASE).await?;
    result
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, BenchError> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn reset_schema(url: &str) -> Result<(), BenchError> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql("SET client_min_messages = warning")
        .execute(&mut conn)
        .await?;
    // One statement at a time: VACUUM cannot run in the implicit transaction of a
    // multi-statement query.
    for statement in SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::raw_sql(statement).execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

/// Runs pgbench with limit.sh's options; returns its transactions per second.
async fn pgbench(
    url: &str,
    script: &Path,
    clients: usize,
    seconds: u64,
) -> Result<f64, BenchError> {
    let threads = clients.clamp(1, 2);
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(threads.to_string())
        .arg("-T")
        .arg(seconds.max(1).to_string())
        .arg("-f")
        .arg(script)
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            BenchError::Ceiling(format!("could not run pgbench (is it installed?): {e}"))
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_tps(&stdout).ok_or_else(|| {
        BenchError::Ceiling(format!(
            "pgbench gave no tps ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })
}

/// The `tps = N` figure of pgbench's summary.
fn parse_tps(stdout: &str) -> Option<f64> {
    stdout.lines().find_map(|line| {
        line.strip_prefix("tps = ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tps_is_read_from_pgbench_summary() {
        let out = "latency average = 0.8 ms\ntps = 9831.5 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(9831.5));
        assert_eq!(parse_tps("nothing"), None);
    }

    #[test]
    fn median_of_three_is_the_middle_one() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
