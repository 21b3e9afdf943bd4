//! The subcommands of `bouncer` and what each one runs.

use std::{
    io::{BufRead, IsTerminal},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, bail};
use bouncer_admin::{
    keys,
    passwords::Passwords,
    service::{self, Migrations, Topology},
};
use bouncer_core::{
    audit::AuditContext,
    config::{AccessLogFormat, Config},
    email::Email,
    routes::RouteTable,
};
use bouncer_gateway::SharedState;
use bouncer_store::{NewUser, Store, StoreError, UserOrigin};
use clap::{Args, Parser, Subcommand};
use time::OffsetDateTime;
use tokio::runtime::Runtime;
use uuid::Uuid;

use crate::{logging::LogFormat, signal};

/// Bouncer: an access-control gateway for the HTTP APIs you already run.
#[derive(Debug, Parser)]
#[command(name = "bouncer", version)]
pub struct Cli {
    /// Log as human-readable text (default) or as JSON lines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the admin service (users, sessions, signing keys).
    Admin {
        #[command(flatten)]
        config: ConfigArg,
        /// Do not apply pending migrations on start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Run admin + gateway (+ the echo upstream when the routes name it) in one process.
    Up {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the gateway (pingora reverse proxy) alone.
    Gateway {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run a tiny upstream that echoes each request as JSON.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Validate route tables.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RoutesCommand {
    /// Validate a route table: exit 0, or non-zero with the file, line and
    /// reason (for CI and systemd ExecStartPre).
    Check {
        /// The routes.yaml to check.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit 0 with the record count and head hash, or
    /// non-zero naming the first record that was edited, deleted or reordered.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user (how the first admin is made). Applies pending migrations first.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        email: String,
        /// Roles to grant; repeat the flag or list several.
        #[arg(long = "role", required = true, num_args = 1..)]
        roles: Vec<String>,
        /// Read the password from the first line of standard input instead
        /// of prompting on the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new signing key; older keys keep verifying until their tokens expire.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Service configuration file.
    #[arg(long = "config", short = 'c', default_value = "config/bouncer.yaml")]
    path: PathBuf,
}

impl ConfigArg {
    /// Reads, parses and validates the file, then applies the environment.
    fn load(&self) -> anyhow::Result<Config> {
        load_config(&self.path)
    }
}

pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut config = Config::from_yaml(&text, &path.display().to_string())?;
    config.apply_env(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
    Ok(config)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Admin { config, no_migrate } => run_admin(config.load()?, !no_migrate),
        Command::Migrate { config } => migrate(config.load()?),
        Command::Gateway { config } => run_gateway(config.load()?, cli.log_format.into()),
        Command::Up { config } => crate::up::run(config.load()?, cli.log_format.into()),
        Command::Echo { listen } => crate::echo::run(listen),
        Command::User { command: UserCommand::Add { config, email, roles, password_stdin } } => {
            add_user(config.load()?, &email, roles, password_stdin)
        }
        Command::Audit { command: AuditCommand::Verify { config } } => verify_audit(config.load()?),
        Command::Routes { command: RoutesCommand::Check { file } } => check_routes(&file),
        Command::Keys { command: KeysCommand::Rotate { config } } => {
            let config = config.load()?;
            let kid = keys::rotate(&config.admin.keys_dir, OffsetDateTime::now_utc())?;
            println!("added signing key {kid} in {}", config.admin.keys_dir.display());
            println!(
                "running admin services start signing with it within {}s",
                keys::RELOAD_INTERVAL.as_secs()
            );
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    bouncer_store::open(&config.admin.database, config.admin.max_db_connections)
        .await
        .context("cannot open the database")
}

fn migrate(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = open_store(&config).await?;
        let report = store.migrate().await?;
        println!("applied {} migration(s); schema at version {}", report.applied.len(), report.current);
        Ok(())
    })
}

fn check_routes(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let table = RouteTable::from_yaml(&text, &file.display().to_string())?;
    println!(
        "{}: ok — {} route(s), {} upstream(s)",
        file.display(),
        table.routes().len(),
        table.upstreams.len()
    );
    Ok(())
}

fn verify_audit(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = open_store(&config).await?;
        match bouncer_store::verify_audit_chain(&*store).await? {
            Ok((count, head)) => {
                println!("audit chain intact: {count} record(s)");
                // Anchor this elsewhere (a ticket, an external log): deleting
                // records from the end is only detectable against it.
                println!("head: {}", hex_string(&head));
                Ok(())
            }
            Err(chain_break) => bail!("audit chain broken: {chain_break}"),
        }
    })
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run_admin(config: Config, migrate: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let migrations = if migrate { Migrations::Apply } else { Migrations::Require };
        let admin = service::start(&config, Topology::Standalone, migrations).await?;
        let (addr, backend) = (admin.addr, admin.state.store.backend());
        let kid = admin.state.keys.signing_kid(OffsetDateTime::now_utc());
        tracing::info!(%addr, database = backend, %kid, "admin listening");
        let grace = config.admin.shutdown_grace.get();
        bouncer_admin::serve(admin.listener, admin.state, signal::shutdown(), grace).await?;
        tracing::info!("admin stopped");
        Ok(())
    })
}

/// Runs the gateway until a signal stops it; pingora owns the process from
/// here (its own runtimes, signal handling and exit).
fn run_gateway(config: Config, log_format: AccessLogFormat) -> anyhow::Result<()> {
    let shared = SharedState::redis(&config)?;
    let api_keys = Arc::new(bouncer_gateway::api_keys::ApiKeySet::default());
    let jwks = bouncer_gateway::jwks::Jwks::new(&config.gateway.jwks_url);
    let (gateway, denials) =
        bouncer_gateway::build(&config.gateway, shared.limiter.clone(), jwks, log_format, api_keys)?;
    let drain = gateway.drain.clone();
    let server = bouncer_gateway::server(&config.gateway, gateway, denials, shared);
    tracing::info!(addr = %config.gateway.listen, jwks = %config.gateway.jwks_url, "gateway listening");
    bouncer_gateway::run(server, drain, config.gateway.shutdown_grace.get())
}

fn add_user(config: Config, email: &str, roles: Vec<String>, password_stdin: bool) -> anyhow::Result<()> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
    let password = read_password(password_stdin)?;
    config.admin.password.check(&password).map_err(|e| anyhow::anyhow!("password: {e}"))?;
    runtime()?.block_on(async {
        let store = open_store(&config).await?;
        store.migrate().await?;
        let hash = Passwords::new(config.admin.password.hash, 1)?.hash(password).await?;
        let id = Uuid::now_v7();
        let now = OffsetDateTime::now_utc();
        let cli = AuditContext { actor: Some("cli".into()), ..AuditContext::default() };
        let new = NewUser {
            id,
            email: email.clone(),
            password_hash: hash,
            roles,
            now,
            origin: UserOrigin::Operator,
        };
        let user = store.create_user(new, &cli).await.map_err(|e| match e {
            StoreError::EmailTaken => anyhow::anyhow!("a user with email {} already exists", email.as_str()),
            StoreError::UnknownRole(role) => {
                anyhow::anyhow!("unknown role {role:?} (built-in roles: admin, user, service)")
            }
            other => other.into(),
        })?;
        println!("created user {} <{}> with roles {}", user.id, user.email, user.roles.join(","));
        Ok(())
    })
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            bail!("--password-stdin: standard input had no password");
        }
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to prompt for a password; pipe it in with --password-stdin");
    }
    let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
    let again = rpassword::prompt_password("Repeat password: ").context("cannot read the password")?;
    if first != again {
        bail!("the passwords did not match");
    }
    Ok(first)
}
