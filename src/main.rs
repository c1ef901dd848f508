//! The `crius` command: `crius daemon` serves CRI; `crius check` checks the host;
//! `crius pod-agent` is what the daemon runs for each pod.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crius::config::{self, Config, ConfigError, ConfigFiles, LogFormat, LogLevel, Overrides};

#[derive(Parser)]
#[command(
    name = "crius",
    version,
    about = "A Kubernetes container runtime (CRI v1)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI RuntimeService and ImageService on a unix socket.
    Daemon(ConfigArgs),
    /// Check that this host has what the runtime needs.
    Check(ConfigArgs),
    /// A pod's agent; started by the daemon, not by hand.
    #[command(hide = true)]
    PodAgent(PodAgentArgs),
}

#[derive(Args)]
struct PodAgentArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long)]
    loopback: bool,
    #[arg(long)]
    pid_init: bool,
    /// name=value, repeated
    #[arg(long = "sysctl")]
    sysctls: Vec<String>,
}

#[derive(Args)]
struct ConfigArgs {
    /// Config file (TOML). A missing file at the default path means all defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Persistent state directory [default: /var/lib/crius]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Runtime state directory [default: /run/crius]
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// CRI socket: PATH or unix://PATH [default: <state>/crius.sock]
    #[arg(long, value_name = "PATH")]
    listen: Option<String>,
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl ConfigArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            root: self.root.clone(),
            state: self.state.clone(),
            listen: self.listen.clone(),
            log_level: self.log_level,
            log_format: self.log_format,
        }
    }

    /// The config file and its drop-ins; exits with status 2 when one cannot be read or parsed.
    fn files(&self) -> Result<ConfigFiles, ExitCode> {
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
        ConfigFiles::read(&path, self.config.is_some()).map_err(config_error)
    }

    /// Loads the effective configuration; exits with status 2 when it is not valid.
    fn load(&self) -> Result<(Config, ConfigFiles), ExitCode> {
        let files = self.files()?;
        let config = files.config(&self.overrides()).map_err(config_error)?;
        Ok((config, files))
    }
}

fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("crius: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Daemon(args) => {
            let (config, files) = match args.load() {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            crius::logging::init(config.log_level, config.log_format);
            tracing::info!(files = ?files.paths(), "configuration loaded");
            limit_malloc_arenas();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("crius")
                // Blocking work (cgroup moves, CNI plugins, unpacking) comes in bursts; idle
                // threads, and the memory they hold, go soon after.
                .max_blocking_threads(64)
                .thread_keep_alive(std::time::Duration::from_secs(2))
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("crius: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crius::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "crius daemon failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::PodAgent(args) => {
            let sysctls = args
                .sysctls
                .iter()
                .filter_map(|s| s.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let agent = crius::agent::process::AgentArgs {
                socket: args.socket,
                hostname: args.hostname,
                loopback: args.loopback,
                sysctls,
                pid_init: args.pid_init,
            };
            match crius::agent::process::run(agent) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crius pod-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => {
            let checked = match args.files().and_then(|files| {
                crius::check::load(&files, &args.overrides()).map_err(config_error)
            }) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if crius::check::report(&crius::check::run(&checked)) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed in
/// one is not reused by another: under bursts of concurrent RPCs the daemon's RSS would ratchet
/// up. Two arenas keep it flat at no measurable cost to a daemon that mostly waits.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a tunable of the allocator; it is called before any other
    // thread exists, and a refusal (0) leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
