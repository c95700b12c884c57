//! `laminar tune check|apply`: the host settings a relay appliance wants.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use laminar_tuning::tune::{self, Setting, Target};

use crate::cli::Fail;

/// Flags of `laminar tune`.
#[derive(Args)]
pub struct TuneArgs {
    #[command(subcommand)]
    command: TuneCommand,
}

#[derive(Args, Clone)]
struct Sizing {
    /// Link bandwidth to size buffers for, e.g. 10Gbit, 25Gbit, 100Gbit
    #[arg(long, default_value = "10Gbit")]
    bandwidth: String,
    /// Round-trip time to the stores, e.g. 50ms
    #[arg(long, default_value = "50ms")]
    rtt: String,
    /// Read (and write) /proc, /sys and /etc under this directory instead of / (for tests)
    #[arg(long, hide = true, default_value = "/")]
    root: PathBuf,
}

#[derive(Subcommand)]
enum TuneCommand {
    /// Compare the host with what a relay appliance wants
    Check {
        #[command(flatten)]
        sizing: Sizing,
        /// One JSON document, keyed by setting name
        #[arg(long)]
        json: bool,
    },
    /// Set the sysctls `check` found wanting, and persist them (a dry run without --yes)
    Apply {
        #[command(flatten)]
        sizing: Sizing,
        /// Really apply (otherwise print what would be done)
        #[arg(long)]
        yes: bool,
        /// The sysctl.d file that makes them survive a reboot
        #[arg(long, default_value = "/etc/sysctl.d/90-laminar.conf")]
        sysctl_file: PathBuf,
    },
}

fn usage(message: String) -> Fail {
    Fail { code: 2, message }
}

fn settings(sizing: &Sizing) -> Result<Vec<Setting>, Fail> {
    let bandwidth_bps = tune::parse_bandwidth(&sizing.bandwidth)
        .ok_or_else(|| usage(format!("--bandwidth {:?}: write e.g. 10Gbit or 800Mbit", sizing.bandwidth)))?;
    let rtt_seconds =
        tune::parse_rtt(&sizing.rtt).ok_or_else(|| usage(format!("--rtt {:?}: write e.g. 50ms", sizing.rtt)))?;
    let cpus = laminar_tuning::allowed_cpus();
    Ok(tune::check(&sizing.root, Target { bandwidth_bps, rtt_seconds }, &cpus))
}

pub fn run(args: TuneArgs) -> Result<u8, Fail> {
    match args.command {
        TuneCommand::Check { sizing, json } => {
            let settings = settings(&sizing)?;
            if json {
                let doc: serde_json::Map<String, serde_json::Value> = settings
                    .iter()
                    .map(|s| (s.name.clone(), serde_json::to_value(s).expect("setting serialises")))
                    .collect();
                outln!("{}", serde_json::Value::Object(doc));
            } else {
                print_table(&settings);
            }
            Ok(if settings.iter().all(|s| s.ok) { 0 } else { 1 })
        }
        TuneCommand::Apply { sizing, yes, sysctl_file } => {
            let settings = settings(&sizing)?;
            match tune::apply(&sizing.root, &settings, &sysctl_file, yes) {
                Ok(applied) if applied.commands.is_empty() => {
                    outln!("nothing to apply: every sysctl laminar checks is already as recommended");
                    Ok(0)
                }
                Ok(applied) if !applied.written => {
                    outln!("dry run; with --yes, laminar would run:");
                    for c in &applied.commands {
                        outln!("  {c}");
                    }
                    outln!("and write them to {} so they survive a reboot", applied.file.display());
                    Ok(0)
                }
                Ok(applied) => {
                    for c in &applied.commands {
                        outln!("applied: {c}");
                    }
                    outln!("wrote {}", applied.file.display());
                    Ok(0)
                }
                Err(e) => Err(usage(e.to_string())),
            }
        }
    }
}

fn print_table(settings: &[Setting]) {
    let width = settings.iter().map(|s| s.name.len()).max().unwrap_or(10);
    outln!("{:<width$}  {:<24}  {:<24}  status", "setting", "current", "recommended");
    for s in settings {
        let current = s.current.clone().unwrap_or_else(|| "(not readable)".into());
        outln!(
            "{:<width$}  {:<24}  {:<24}  {}",
            s.name,
            truncate(&current, 24),
            truncate(&s.recommended, 24),
            if s.ok { "ok" } else { "CHANGE" }
        );
        if !s.ok {
            outln!("{:<width$}    why: {}", "", s.why);
            if let Some(fix) = &s.fix {
                outln!("{:<width$}    fix: {fix}", "");
            }
        }
    }
    let wanting = settings.iter().filter(|s| !s.ok).count();
    if wanting > 0 {
        outln!("\n{wanting} setting(s) to change; `laminar tune apply --yes` sets the sysctls among them (as root)");
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}
