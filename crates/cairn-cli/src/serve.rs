//! `cairn serve` and `cairn token …`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cairn_server::auth::{create_expiring_token, create_token, valid_user, TokenInfo};
use cairn_server::{AuthMode, Role, ServerOptions};
use std::sync::Arc;

use cairn_store::{Store, StoreError, Tokens};
use cairn_store_sqlite::SqliteStore;
use clap::{Args, Subcommand};

use crate::run::{load_config, open_store};
use crate::{exit, Fail};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "CAIRN_BIND")]
    bind: String,
    /// The SQLite database file.
    #[arg(
        long,
        default_value = "cairn.db",
        env = "CAIRN_DB",
        conflicts_with = "database_url"
    )]
    db: PathBuf,
    /// A PostgreSQL database instead of the SQLite file (postgres://USER@HOST:5432/DB): any
    /// number of nodes may serve one database together.
    #[arg(long, env = "CAIRN_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The configuration file (default: ./cairn.toml if it exists).
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Accept requests without a token (everyone is an admin). Loopback addresses only.
    #[arg(long)]
    no_auth: bool,
    /// How long a remote worker keeps a task without a heartbeat.
    #[arg(long, default_value_t = cairn_engine::remote::DEFAULT_LEASE_MS, env = "CAIRN_WORKER_LEASE_MS")]
    worker_lease_ms: u64,
    /// Close a connection that has not sent a complete request head this long after opening
    /// (or after the head's first byte), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Close a connection with no request in flight and no traffic for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Most client connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// How often a quiet event stream (SSE, WebSocket) sends a keep-alive.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    stream_keep_alive: Duration,
    /// This node's name in plan leases and `cairn nodes`; unique among the nodes sharing a
    /// database (default: HOSTNAME-PID-XXXX, new for every process).
    #[arg(long, env = "CAIRN_NODE_ID")]
    node_id: Option<String>,
    /// How long this node's lease on a plan lasts without renewal, in milliseconds: when a node
    /// dies, another takes its plans over within two of these.
    #[arg(long, default_value_t = DEFAULT_LEASE_MS, env = "CAIRN_LEASE_MS")]
    lease_ms: u64,
    /// The URL the other nodes reach this one at (default: http:// and the address it listens
    /// on; 0.0.0.0 becomes 127.0.0.1, which only nodes on this machine can reach).
    #[arg(long, env = "CAIRN_ADVERTISE")]
    advertise: Option<String>,
    /// Most commands (start, pause, interventions, step results, …) waiting to be decided at
    /// once across every plan of this node; past it a command is refused at once with 429
    /// `overloaded` and a Retry-After, while reads are still answered. 0 refuses every command.
    #[arg(long, default_value_t = cairn_engine::DEFAULT_MAX_QUEUED_COMMANDS, env = "CAIRN_MAX_QUEUED_COMMANDS")]
    max_queued_commands: usize,
}

/// `--lease-ms` by default.
pub const DEFAULT_LEASE_MS: u64 = 10_000;

/// The shortest and longest `--lease-ms` accepted.
const LEASE_MS_RANGE: std::ops::RangeInclusive<u64> = 500..=3_600_000;

/// A node id: 1 to 128 letters, digits, `.`, `_` or `-`.
fn valid_node_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A node id no other process has: `HOSTNAME-PID-XXXX` (four random hex digits, so a pid
/// reused after a restart still gives a new id).
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(64)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cairn".to_owned());
    let mut rnd = [0u8; 2];
    // Without randomness the pid alone still separates the processes of one machine.
    let _ = getrandom::fill(&mut rnd);
    format!("{host}-{}-{:02x}{:02x}", std::process::id(), rnd[0], rnd[1])
}

/// `--advertise` checked, or the URL derived from the address listened on.
fn advertise_url(given: Option<&str>, local: SocketAddr) -> Result<String, Fail> {
    if let Some(url) = given {
        let url = url.trim_end_matches('/');
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && reqwest::Url::parse(url).is_ok_and(|u| u.host().is_some() && u.path() == "/");
        if !ok {
            return Err(Fail::input(format!(
                "--advertise {url:?} must be a URL like http://10.0.0.5:8080 (scheme, host, port; no path)"
            )));
        }
        return Ok(url.to_owned());
    }
    let reachable = if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    };
    Ok(format!("http://{reachable}"))
}

/// A duration like `500ms`, `10s`, `30m`, `12h` or `7d` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 30m, 12h or 7d"))?;
    let ms_per = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

pub async fn serve(args: ServeArgs) -> Result<u8, Fail> {
    let addr: SocketAddr = args.bind.parse().map_err(|_| {
        Fail::input(format!(
            "--bind {:?} is not an address like 127.0.0.1:8080",
            args.bind
        ))
    })?;
    if args.no_auth && !addr.ip().is_loopback() {
        return Err(Fail::input(format!(
            "--no-auth is refused on {}: without tokens anyone who can reach the address controls every plan; bind a loopback address (127.0.0.1) or drop --no-auth",
            addr.ip()
        )));
    }
    let node_id = args.node_id.clone().unwrap_or_else(default_node_id);
    if !valid_node_id(&node_id) {
        return Err(Fail::input(format!(
            "--node-id {node_id:?} must be 1 to 128 letters, digits, '.', '_' or '-'"
        )));
    }
    if !LEASE_MS_RANGE.contains(&args.lease_ms) {
        return Err(Fail::input(format!(
            "--lease-ms {} must be between {} and {} milliseconds",
            args.lease_ms,
            LEASE_MS_RANGE.start(),
            LEASE_MS_RANGE.end()
        )));
    }
    if let Some(url) = &args.advertise {
        // Checked before anything is opened; the address listened on is not needed for that.
        advertise_url(Some(url), SocketAddr::from(([127, 0, 0, 1], 0)))?;
    }
    if args.max_connections == 0 {
        return Err(Fail::input("--max-connections must be at least 1"));
    }
    if args.header_timeout.is_zero()
        || args.idle_timeout.is_zero()
        || args.stream_keep_alive.is_zero()
    {
        return Err(Fail::input(
            "--header-timeout, --idle-timeout and --stream-keep-alive must be longer than 0",
        ));
    }
    let config = load_config(args.config.as_deref(), None)?;
    type Opened = (
        Arc<dyn Store>,
        Option<Arc<SqliteStore>>,
        Option<Arc<dyn cairn_engine::queue::TaskQueue>>,
    );
    let (store, sqlite, queue): Opened = match &args.database_url {
        Some(url) => {
            let pg = crate::store::open_postgres(url).await?;
            // One live process per node id: two nodes never share a fence.
            pg.hold_node(&node_id).await.map_err(|e| Fail {
                code: exit::FAILED,
                message: match e {
                    StoreError::Locked(why) => format!(
                        "--node-id {node_id}: {why}; give this node another id, or leave --node-id out for a new one"
                    ),
                    other => format!("cannot register node {node_id}: {other}"),
                },
            })?;
            // Remote workers may poll any node: the task queue is the database's.
            let queue = cairn_store_postgres::PgQueue::new(&pg, args.worker_lease_ms)
                .await
                .map_err(|e| Fail {
                    code: exit::FAILED,
                    message: format!("cannot open the task queue in the database: {e}"),
                })?;
            (pg, None, Some(Arc::new(queue)))
        }
        None => {
            let s = open_store(&args.db, true)?;
            (s.clone(), Some(s), None)
        }
    };
    if !args.no_auth {
        let tokens = store
            .list_tokens()
            .await
            .map_err(|e| Fail::from(anyhow::anyhow!("cannot read tokens: {e}")))?;
        if tokens.is_empty() {
            let t = create_token(&*store, "admin", Role::Admin)
                .await
                .map_err(|e| Fail::from(anyhow::anyhow!("cannot create the admin token: {e}")))?;
            eprintln!(
                "no token existed yet; created an admin token (shown once, keep it):\n  {}\nuse it as `Authorization: Bearer <token>` or CAIRN_TOKEN for the cairn client",
                t.token
            );
        }
    }
    // Every connection costs a file descriptor: let the connection limit decide, not the
    // default soft limit.
    let _ = cairn_server::raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Fail::input(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Fail::from(anyhow::anyhow!("{e}")))?;
    let advertise = advertise_url(args.advertise.as_deref(), local)?;
    // The same wiring the server's in-process tests use.
    let server = cairn_server::Server::build(
        store.clone(),
        ServerOptions {
            engine: cairn_engine::EngineOptions {
                node_id: node_id.clone(),
                lease_ms: args.lease_ms,
                max_queued_commands: args.max_queued_commands,
                ..cairn_engine::EngineOptions::default()
            },
            advertise: Some(advertise.clone()),
            queue,
            registry: config.registry(),
            webhooks: config.webhooks.clone(),
            worker_lease_ms: args.worker_lease_ms,
            auth: if args.no_auth {
                AuthMode::Open {
                    user: "anonymous".into(),
                }
            } else {
                AuthMode::Tokens
            },
            stream_keep_alive: args.stream_keep_alive,
            limits: cairn_server::ServeOptions {
                header_timeout: args.header_timeout,
                idle_timeout: args.idle_timeout,
                max_connections: args.max_connections,
            },
            ..ServerOptions::default()
        },
    )
    .await?;
    println!("cairn listening on http://{local}");
    eprintln!("node {node_id}, reached by the other nodes at {advertise}");
    // Processes refused the SQLite file's lock tell their users to come through this address.
    if let Some(sqlite) = &sqlite {
        sqlite.announce_address(&advertise);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let shutdown = async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        // Not eprintln!: it panics when stderr cannot be written (a full disk).
        let _ = writeln!(
            std::io::stderr(),
            "shutting down: no new requests; finishing those in flight"
        );
    };
    server
        .serve(listener, shutdown)
        .await
        .map_err(|e| Fail::from(anyhow::anyhow!("server: {e}")))?;
    Ok(exit::OK)
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token and print it (shown once).
    Create {
        #[arg(long)]
        user: String,
        /// viewer, operator, admin or worker.
        #[arg(long)]
        role: String,
        /// The token stops being accepted after this long, e.g. 30m, 12h or 7d (default: never).
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        db: StoreArgs,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        db: StoreArgs,
    },
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        db: StoreArgs,
    },
}

/// Where the tokens are: works on the store directly, also while a server runs on it.
#[derive(Args, Debug)]
pub struct StoreArgs {
    #[arg(
        long,
        default_value = "cairn.db",
        env = "CAIRN_DB",
        conflicts_with = "database_url"
    )]
    db: PathBuf,
    /// A PostgreSQL database instead of the SQLite file (postgres://USER@HOST:5432/DB).
    #[arg(long, env = "CAIRN_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn token(cmd: TokenCmd) -> Result<u8, Fail> {
    let db = match &cmd {
        TokenCmd::Create { db, .. } | TokenCmd::List { db } | TokenCmd::Revoke { db, .. } => db,
    };
    let store: Arc<dyn Tokens> = match &db.database_url {
        // Every node of the database reads the same tokens.
        Some(url) => crate::store::open_postgres(url).await?,
        None => {
            // Only `token create` may create the database: a mistyped --db is refused by name.
            if !matches!(cmd, TokenCmd::Create { .. }) {
                crate::store::must_exist(&db.db)?;
            }
            // No engine lock: tokens may be managed while a server drives the plans.
            open_store(&db.db, false)?
        }
    };
    match cmd {
        TokenCmd::Create {
            user,
            role,
            expires_in,
            db,
        } => {
            if !valid_user(&user) {
                return Err(Fail::input(
                    "--user must be 1 to 128 printable characters without spaces",
                ));
            }
            let role = Role::parse(&role).ok_or_else(|| {
                Fail::input(format!(
                    "unknown role {role:?}; one of viewer, operator, admin, worker"
                ))
            })?;
            let expires_at = match expires_in {
                None => None,
                Some(d) if d.is_zero() => {
                    return Err(Fail::input("--expires-in must be longer than 0"))
                }
                Some(d) => Some(
                    i64::try_from(d.as_micros())
                        .ok()
                        .and_then(|us| cairn_engine::now_micros().checked_add(us))
                        .ok_or_else(|| Fail::input("--expires-in is too long"))?,
                ),
            };
            let t = create_expiring_token(&*store, &user, role, expires_at)
                .await
                .map_err(|e| Fail::from(anyhow::anyhow!("cannot create the token: {e}")))?;
            if db.json {
                println!("{}", serde_json::to_string_pretty(&t).unwrap_or_default());
            } else {
                println!("{}", t.token);
                let until = t
                    .expires_at
                    .map(|at| format!(", expires at {at}"))
                    .unwrap_or_default();
                eprintln!(
                    "token {} for {} ({}{until}); shown once",
                    t.id,
                    t.user,
                    t.role.as_str()
                );
            }
        }
        TokenCmd::List { db } => {
            let rows = store
                .list_tokens()
                .await
                .map_err(|e| Fail::from(anyhow::anyhow!("cannot list tokens: {e}")))?;
            let expiries: Vec<Option<i64>> = rows.iter().map(|r| r.expires_at).collect();
            let items: Vec<TokenInfo> = rows.into_iter().map(TokenInfo::from).collect();
            if db.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"items": items}))
                        .unwrap_or_default()
                );
            } else {
                println!(
                    "{:<22} {:<20} {:<9} {:<8} EXPIRES (UTC)",
                    "ID", "USER", "ROLE", "STATUS"
                );
                let now = cairn_engine::now_micros();
                for (t, row_expires) in items.into_iter().zip(expiries) {
                    let status = if t.revoked_at.is_some() {
                        "revoked"
                    } else if row_expires.is_some_and(|at| at <= now) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<22} {:<20} {:<9} {:<8} {}",
                        t.id,
                        t.user,
                        t.role,
                        status,
                        t.expires_at
                            .map_or_else(|| "never".to_owned(), |at| at.to_string())
                    );
                }
            }
        }
        TokenCmd::Revoke { id, .. } => {
            let found = store
                .revoke_token(&id, cairn_engine::now_micros())
                .await
                .map_err(|e| Fail::from(anyhow::anyhow!("cannot revoke: {e}")))?;
            if !found {
                return Err(Fail::input(format!("no live token with id {id}")));
            }
            eprintln!("revoked {id} (every running server stops accepting it within 5 s)");
        }
    }
    Ok(exit::OK)
}
