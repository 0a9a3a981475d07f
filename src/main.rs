//! The `ephemera` command: parse arguments, dispatch, turn errors into one
//! line on stderr and a non-zero exit. The daemon (`ephemera up`) and the
//! command line are this binary's own modules; the stack is the library's.

// The OS edge the daemon needs goes through nix, signal-hook and the
// library; nothing here is unsafe.
#![deny(unsafe_code)]

mod cli;
mod daemon;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cli::{control_path, Cli, Command, FetchArgs, PortsArgs};
use daemon::control;
use daemon::table::{format_budget, format_counters, format_ports_table, format_shards, PortEntry};

/// How long a client waits for each reply from the daemon.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Up(_)) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    let result = match cli.command {
        Command::Up(args) => daemon::run(&args),
        Command::Ports(args) => ports(&args),
        Command::Fetch(args) => fetch(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ephemera: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn connect(control: Option<&std::path::Path>, tun: &str) -> Result<control::ControlClient, String> {
    let path = control_path(control, tun);
    control::ControlClient::connect(&path, REPLY_TIMEOUT)
        .map_err(|e| control::explain_connect(&path, &e))
}

fn ports(args: &PortsArgs) -> Result<(), String> {
    let mut client = connect(args.control.as_deref(), &args.tun)?;
    let ports = client.ports().map_err(|e| format!("ports: {e}"))?;
    let stats = if args.stats {
        Some(client.stats().map_err(|e| format!("stats: {e}"))?)
    } else {
        None
    };
    let mut out = io::stdout().lock();
    let written = if args.json {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            ports: &'a [PortEntry],
            #[serde(skip_serializing_if = "Option::is_none")]
            stats: Option<&'a BTreeMap<String, u64>>,
            /// Each shard's own counters, with more than one.
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            shard_stats: &'a [BTreeMap<String, u64>],
        }
        let json = serde_json::to_string_pretty(&Json {
            ports: &ports,
            stats: stats.as_ref().map(|s| &s.counters),
            shard_stats: stats.as_ref().map_or(&[], |s| &s.shards),
        })
        .map_err(|e| e.to_string())?;
        writeln!(out, "{json}")
    } else {
        let mut text = format_ports_table(&ports);
        if let Some(stats) = &stats {
            text.push('\n');
            if let Some(budget) = format_budget(&stats.counters) {
                text.push_str(&budget);
                text.push('\n');
            }
            if let Some(shards) = format_shards(&stats.counters) {
                text.push_str(&shards);
                text.push('\n');
            }
            text.push_str(&format_counters(&stats.counters, &stats.shards));
        }
        out.write_all(text.as_bytes())
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(format!("writing output: {e}")),
        _ => Ok(()),
    }
}

fn fetch(args: &FetchArgs) -> Result<(), String> {
    let mut client = connect(args.control.as_deref(), &args.tun)?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        )),
        None => Box::new(io::stdout().lock()),
    };
    let summary = client
        .fetch(&args.url, &mut out, |local, remote, status| {
            eprintln!("ephemera: {local} -> {remote}: HTTP {status}");
        })
        .map_err(|e| format!("fetch {}: {e}", args.url))?;
    out.flush().map_err(|e| format!("writing body: {e}"))?;
    eprintln!("ephemera: {} bytes", summary.bytes);
    Ok(())
}
