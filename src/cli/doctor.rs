//! `stepwise doctor [--json]`: every finding with what to do; exit 0 healthy, 2 something to fix.

use super::print_json;
use crate::doctor::{self, Status};
use crate::exit::CliError;
use clap::Args;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print `{"healthy","checks":[{"name","status","detail","fix"}]}`.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: DoctorArgs) -> Result<(), CliError> {
    let report = doctor::examine().await;
    if args.json {
        print_json(&report)?;
    } else {
        for check in &report.checks {
            let status = match check.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{status}  {:<20} {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                println!("      {:<20} fix: {fix}", "");
            }
        }
    }
    if report.healthy {
        Ok(())
    } else {
        let failed = report
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        Err(CliError::usage(format!(
            "doctor: {failed} thing(s) to fix (see FAIL above)"
        )))
    }
}
