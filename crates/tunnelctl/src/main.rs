//! `tunnelctl`: the operator's command-line tool for tunnel-gateway.
//!
//! Commands are grouped by subject: `user` edits the users file; `status`, `sessions`, `disconnect`,
//! `ban` and `reload` talk to the running daemon over its control socket (see [`daemon`]); `readiness`
//! checks this host and the configuration before tunneld runs.

mod daemon;
mod readiness;

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tunnel_gateway::config::Config;
use tunnel_gateway::users::{self, UserDb, UsersError};

/// The users file used when neither `--users-file` nor `--config` says otherwise.
const DEFAULT_USERS_FILE: &str = "/etc/tunneld/users";

/// Operator CLI for tunnel-gateway.
#[derive(Debug, Parser)]
#[command(name = "tunnelctl", version, about, long_about = None)]
struct Cli {
    /// The tunneld configuration file (the same one tunneld reads); settings tunnelctl needs
    /// (such as auth.users_file) are taken from it. Without it, built-in defaults apply.
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "PATH",
        env = "TUNNELD_CONFIG"
    )]
    config: Option<PathBuf>,

    /// The daemon's control socket. Default: control.socket from --config if given, else
    /// /run/tunneld/control.sock.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "TUNNELD_CONTROL_SOCKET"
    )]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// Top-level command groups.
#[derive(Debug, Subcommand)]
enum Command {
    /// Manage VPN users in the users file (ocserv ocpasswd-compatible format).
    #[command(subcommand)]
    User(UserCommand),
    /// Show the running daemon's status: version, uptime, listeners, readiness, sessions, pool
    /// use, bans, certificate.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List sessions: user, device address, tunnel addresses, transport, bytes, connected since.
    Sessions {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End sessions: each connected client gets a DISCONNECT and its cookie is revoked.
    Disconnect(daemon::DisconnectArgs),
    /// Banned source addresses and failure scores.
    #[command(subcommand)]
    Ban(daemon::BanCommand),
    /// Reload the configuration file, certificate and users file (like SIGHUP). Live sessions
    /// stay, except those whose device certificate a CRL now revokes; an invalid configuration is
    /// refused with the reason and the running one kept.
    Reload,
    /// Check this host and the configuration for running tunneld: each check PASS, WARN, FAIL
    /// or SKIP, with the fix. Exits 1 when a check fails.
    Readiness(readiness::ReadinessArgs),
}

/// `tunnelctl user ...`
#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user with a new password (Argon2id). Fails if the user already exists.
    Add {
        /// The username: not empty, no ':' or control characters, not starting with '#'.
        name: String,
        /// The user's group (written to the file's group field); default: no group ('*').
        #[arg(long, short = 'g', value_name = "GROUP")]
        group: Option<String>,
        #[command(flatten)]
        file: UsersFileArg,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Set a new password for an existing user (this also unlocks a locked account). Fails if
    /// the user does not exist.
    Passwd {
        /// The username.
        name: String,
        /// Also change the user's group; default: keep the current group.
        #[arg(long, short = 'g', value_name = "GROUP")]
        group: Option<String>,
        #[command(flatten)]
        file: UsersFileArg,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Delete a user. Fails if the user does not exist.
    Del {
        /// The username.
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
    },
}

/// Which users file to edit.
#[derive(Debug, Args)]
struct UsersFileArg {
    /// The users file to edit. Default: auth.users_file from --config if given, else
    /// /etc/tunneld/users.
    #[arg(long, short = 'f', value_name = "PATH")]
    users_file: Option<PathBuf>,
}

/// How the new password is obtained.
#[derive(Debug, Args)]
struct PasswordArg {
    /// Read the password as one line from standard input instead of prompting twice on the
    /// terminal (for scripts: `printf '%s\n' "$PW" | tunnelctl user add NAME --password-stdin`).
    #[arg(long)]
    password_stdin: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tunnelctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = cli.config.as_deref();
    let socket = || daemon::socket_path(cli.socket.as_deref(), config);
    match cli.command {
        Command::User(cmd) => run_user(config, cmd)?,
        Command::Status { json } => daemon::status(&socket()?, json)?,
        Command::Sessions { json } => daemon::sessions(&socket()?, json)?,
        Command::Disconnect(args) => daemon::disconnect(&socket()?, &args)?,
        Command::Ban(cmd) => daemon::ban(&socket()?, cmd)?,
        Command::Reload => daemon::reload(&socket()?)?,
        Command::Readiness(args) => return Ok(readiness::run(config, &args)),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_user(config: Option<&Path>, cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            group,
            file,
            password,
        } => {
            let path = users_file(config, &file)?;
            if load_existing(&path)?.is_some_and(|db| db.contains(&name)) {
                bail!(
                    "user {name:?} already exists in {} (use `tunnelctl user passwd`)",
                    path.display()
                );
            }
            let pw = read_new_password(&name, password.password_stdin)?;
            let hash = users::hash_password(&pw)?;
            users::set_user(&path, &name, group.as_deref(), &hash)
                .with_context(|| format!("cannot add user {name:?}"))?;
            println!("added user {name:?} to {}", path.display());
        }
        UserCommand::Passwd {
            name,
            group,
            file,
            password,
        } => {
            let path = users_file(config, &file)?;
            let db = load_existing(&path)?.filter(|db| db.contains(&name));
            let Some(db) = db else {
                bail!(
                    "no user {name:?} in {} (use `tunnelctl user add`)",
                    path.display()
                );
            };
            let group = group.or_else(|| db.group(&name).map(str::to_owned));
            let pw = read_new_password(&name, password.password_stdin)?;
            let hash = users::hash_password(&pw)?;
            users::set_user(&path, &name, group.as_deref(), &hash)
                .with_context(|| format!("cannot change the password of {name:?}"))?;
            println!("changed the password of {name:?} in {}", path.display());
        }
        UserCommand::Del { name, file } => {
            let path = users_file(config, &file)?;
            if !users::delete_user(&path, &name)
                .with_context(|| format!("cannot delete user {name:?}"))?
            {
                bail!("no user {name:?} in {}", path.display());
            }
            println!("deleted user {name:?} from {}", path.display());
        }
    }
    Ok(())
}

/// `--users-file`, else `auth.users_file` of `--config`, else the default.
fn users_file(config: Option<&Path>, arg: &UsersFileArg) -> Result<PathBuf> {
    if let Some(p) = &arg.users_file {
        return Ok(p.clone());
    }
    match config {
        Some(c) => Ok(Config::load(c)
            .with_context(|| {
                format!(
                    "cannot take auth.users_file from {} (or pass --users-file)",
                    c.display()
                )
            })?
            .auth
            .users_file),
        None => Ok(PathBuf::from(DEFAULT_USERS_FILE)),
    }
}

/// Loads the users file; `None` when it does not exist yet.
fn load_existing(path: &Path) -> Result<Option<UserDb>> {
    match UserDb::load(path) {
        Ok(db) => Ok(Some(db)),
        Err(UsersError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the new password: one line from stdin, or twice from the terminal with echo off.
fn read_new_password(name: &str, from_stdin: bool) -> Result<String> {
    let pw = if from_stdin {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        line.strip_suffix('\r').unwrap_or(line).to_owned()
    } else {
        let first = rpassword::prompt_password(format!("New password for {name}: ")).context(
            "cannot read the password from the terminal (use --password-stdin when there is none)",
        )?;
        let second = rpassword::prompt_password("Repeat the password: ")
            .context("cannot read the password from the terminal")?;
        if first != second {
            bail!("the passwords do not match; nothing was changed");
        }
        first
    };
    if pw.is_empty() {
        bail!("empty password; nothing was changed");
    }
    Ok(pw)
}
