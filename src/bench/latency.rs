//! Latencies of sagas, read back from what the engine recorded: start (`sagas.created_at`, the
//! engine's clock when `start` was called) -> first step ran (`steps.finished_at` of step 0,
//! the worker's clock when the step's action returned) -> terminal (`sagas.updated_at` of the
//! final commit). Not the step's recorded start: that is when its attempt was begun, in the
//! statement that claims the saga (or starts it, for a local start), before the commit the
//! step's code waits for. Percentiles come from an HDR histogram in microseconds.

use super::BenchError;
use hdrhistogram::Histogram;
use serde::Serialize;
use stepwise_engine::PgStore;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Default)]
pub struct LatencySummary {
    pub samples: u64,
    pub first_step_p50: Option<f64>,
    pub first_step_p99: Option<f64>,
    pub first_step_max: Option<f64>,
    pub done_p50: Option<f64>,
    pub done_p99: Option<f64>,
    pub done_max: Option<f64>,
}

/// Reads the latencies of `ids` (all terminal) and summarizes them in milliseconds.
pub async fn of_sagas(store: &PgStore, ids: &[Uuid]) -> Result<LatencySummary, BenchError> {
    let rows = store.saga_times(ids).await?;
    let mut first = histogram()?;
    let mut done = histogram()?;
    for times in &rows {
        if let Some(ran) = times.first_step_finished_at {
            record(&mut first, ran - times.created_at)?;
        }
        record(&mut done, times.updated_at - times.created_at)?;
    }
    Ok(LatencySummary {
        samples: rows.len() as u64,
        first_step_p50: quantile(&first, 0.50),
        first_step_p99: quantile(&first, 0.99),
        first_step_max: (!first.is_empty()).then(|| first.max() as f64 / 1000.0),
        done_p50: quantile(&done, 0.50),
        done_p99: quantile(&done, 0.99),
        done_max: (!done.is_empty()).then(|| done.max() as f64 / 1000.0),
    })
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    // 1 µs to 1 hour, 3 significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| BenchError::Internal(format!("histogram: {e}")))
}

fn record(h: &mut Histogram<u64>, d: chrono::Duration) -> Result<(), BenchError> {
    let micros = d.num_microseconds().unwrap_or(i64::MAX).max(1) as u64;
    h.saturating_record(micros);
    Ok(())
}

fn quantile(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| round3(h.value_at_quantile(q) as f64 / 1000.0))
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_in_milliseconds() {
        let mut h = histogram().unwrap();
        for ms in 1..=100 {
            record(&mut h, chrono::Duration::milliseconds(ms)).unwrap();
        }
        let p50 = quantile(&h, 0.5).unwrap();
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        let p99 = quantile(&h, 0.99).unwrap();
        assert!((98.9..=99.1).contains(&p99), "{p99}");
    }
}
