//! `tunnelctl readiness`: runs `tunnel_gateway::readiness` on this host with the configuration from
//! `--config` (or the built-in defaults) and prints each check, as text or JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use tunnel_gateway::config::Config;
use tunnel_gateway::readiness::{self, Host, Options, Report};

/// `tunnelctl readiness` options.
#[derive(Debug, Args)]
pub(crate) struct ReadinessArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also check for a container runtime (Docker >= 19.03 or Podman >= 3).
    #[arg(long)]
    container_runtime: bool,
    /// The public FQDN or IP clients connect to, for the certificate's SAN check. Default:
    /// server.server_name.
    #[arg(long, value_name = "NAME")]
    public_name: Option<String>,
    /// Extra trusted root CA certificates (PEM) for the chain check, for a private CA.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

/// Runs the checks and prints them; exit status 1 when any check failed.
pub(crate) fn run(config: Option<&Path>, args: &ReadinessArgs) -> ExitCode {
    let report = match config {
        Some(p) => match Config::load(p) {
            Ok(c) => check(&c, args),
            Err(e) => Report::config_error(&e),
        },
        None => {
            if !args.json {
                println!("(no --config: checking the built-in defaults)");
            }
            check(&Config::default(), args)
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("tunnelctl: error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("{report}");
    }
    if report.has_failures() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check(config: &Config, args: &ReadinessArgs) -> Report {
    let opts = Options {
        container_runtime: args.container_runtime,
        public_name: args.public_name.clone(),
        ca_file: args.ca_file.clone(),
    };
    readiness::run(config, &opts, &Host::system())
}
