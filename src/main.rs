//! The `bearward` command: parse arguments, load the config, set up logging, bind, run.

use bearward::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A reverse proxy that enforces OAuth 2.0 bearer JWTs in front of HTTP APIs.
#[derive(Parser)]
#[command(version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BEARWARD_COMMIT"), ")"), about)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, short, env = "BEARWARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file: prints OK or every problem, exits 0 or 1.
    Check,
    /// Run the proxy (the default).
    Run,
    /// Explain what bearward would do with one request: the canonical path, the route, each
    /// token check with pass or fail, and the answer. The token comes from --token or stdin.
    Explain {
        /// The request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request target: path and optional query.
        #[arg(long)]
        path: String,
        /// The bearer token (else read from stdin when it is not a terminal).
        #[arg(long)]
        token: Option<String>,
        /// A request header, `Name: value`; repeat it for more (or for a name twice).
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The request is a decision request from an ingress to the `[decision]` listener
        /// (method, path and headers as the ingress sends them): explain the request it
        /// describes, as that listener reads it.
        #[arg(long)]
        decision: bool,
        /// The client's address, for routes with `source_ranges`: the peer's, or the one a
        /// trusted proxy names (with --decision, the ingress's X-Forwarded-For is read instead).
        #[arg(long, value_name = "ADDRESS")]
        from: Option<std::net::IpAddr>,
    },
    /// A self-contained walkthrough: an echo API, a signing key, bearward in front, and curl
    /// commands to try. Needs nothing else installed.
    Demo {
        /// Where bearward listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Instead of waiting for curl: send the demo a load from this process for SECONDS,
        /// check every answer, and exit (the profile-guided build's training run,
        /// deploy/pgo.sh).
        #[arg(long, value_name = "SECONDS")]
        train: Option<u64>,
    },
}

/// sysexits EX_USAGE / EX_CONFIG
const EXIT_USAGE: u8 = 64;
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo { listen, train }) = cli.command {
        return match train {
            Some(seconds) => train_run(seconds),
            None => demo(listen),
        };
    }
    let Some(path) = cli.config else {
        eprintln!("bearward: no config file; pass --config FILE or set BEARWARD_CONFIG");
        return ExitCode::from(EXIT_USAGE);
    };
    match cli.command {
        Some(Command::Check) => check(&path),
        Some(Command::Run) | None => run(&path),
        Some(Command::Explain {
            method,
            path: target,
            token,
            headers,
            decision,
            from,
        }) => explain(&path, &method, &target, token, &headers, decision, from),
        Some(Command::Demo { .. }) => unreachable!("handled above"),
    }
}

/// The main thread's runtime: tokio's current-thread scheduler. It accepts connections and
/// runs the background work (key refresh, reloads, the admin listener); the connections run on
/// `server.worker_threads` worker threads of their own (`bearward::server` starts them), or on
/// this runtime when there is one worker (a sidecar pinned to one CPU).
fn runtime() -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    match builder.enable_all().build() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("bearward: cannot start the runtime: {e}");
            None
        }
    }
}

/// `demo --train`: half the time with a connection worker per CPU, half with the connections
/// on the main thread (what a sidecar pinned to one CPU runs), so the profile-guided build is
/// trained on both.
fn train_run(seconds: u64) -> ExitCode {
    bearward::telemetry::init(bearward::config::LogFormat::Text);
    let halves = [(None, seconds.div_ceil(2)), (Some(1), seconds / 2)];
    let mut total = 0;
    for (threads, secs) in halves {
        if secs == 0 {
            continue;
        }
        let Some(rt) = runtime() else {
            return ExitCode::FAILURE;
        };
        match rt.block_on(bearward::demo::train(secs, threads)) {
            Ok(n) => total += n,
            Err(e) => {
                eprintln!("bearward demo --train: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("bearward demo --train: {total} requests in {seconds} s, every answer as expected");
    ExitCode::SUCCESS
}

fn demo(listen: std::net::SocketAddr) -> ExitCode {
    bearward::telemetry::init(bearward::config::LogFormat::Text);
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(bearward::demo::run(listen, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bearward demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn explain(
    path: &std::path::Path,
    method: &str,
    target: &str,
    token: Option<String>,
    headers: &[String],
    decision: bool,
    from: Option<std::net::IpAddr>,
) -> ExitCode {
    use std::io::{IsTerminal, Read};
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bearward: invalid config:\n{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Ok(method) = method.parse::<http::Method>() else {
        eprintln!("bearward: {method:?} is not an HTTP method");
        return ExitCode::from(EXIT_USAGE);
    };
    let mut pairs = Vec::with_capacity(headers.len());
    for h in headers {
        let Some((name, value)) = h.split_once(':') else {
            eprintln!("bearward: --header {h:?} is not `Name: value`");
            return ExitCode::from(EXIT_USAGE);
        };
        pairs.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let token = token.or_else(|| {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return None;
        }
        // A token is at most 64 KiB (the largest max_token_bytes); read no more than that.
        let mut s = String::new();
        stdin
            .lock()
            .take(64 * 1024 + 1)
            .read_to_string(&mut s)
            .ok()?;
        let s = s.trim().to_owned();
        (!s.is_empty()).then_some(s)
    });
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let asked = bearward::explain::Asked {
        method: &method,
        target,
        token: token.as_deref(),
        headers: &pairs,
        decision,
        from,
    };
    let explained = rt.block_on(bearward::explain::explain_with(&config, &asked));
    print!("{}", explained.text);
    match explained.verdict {
        bearward::explain::Verdict::Forward => ExitCode::SUCCESS,
        bearward::explain::Verdict::Refuse => ExitCode::from(2),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                println!("warning: {w}");
            }
            println!(
                "OK: {} ({} routes, {} upstreams, {} issuers)",
                path.display(),
                config.routes.routes().len(),
                config.upstreams.len(),
                config.issuers.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bearward: invalid config:\n{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    bearward::telemetry::init(config.server.listening.log_format);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let workers = bearward::worker::count(config.server.listening.worker_threads);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let watch = config.server.watch_config;
    let path = path.to_path_buf();
    runtime.block_on(async move {
        let server = match bearward::build(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        if let Ok(addr) = server.local_addr() {
            tracing::info!(
                %addr,
                admin = ?server.admin_addr(),
                workers,
                "bearward listening"
            );
        }
        let live = server.live();
        tokio::spawn(bearward::server::reload_on_sighup(
            live.clone(),
            path.clone(),
        ));
        if watch {
            tokio::spawn(bearward::server::watch_config(
                live,
                path,
                std::time::Duration::from_secs(1),
            ));
        }
        let (first, second) = shutdown_signals();
        match server.run_until(first, second).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// The first SIGTERM/SIGINT and the second one: the first starts the shutdown
/// (`server.shutdown_delay`), the second ends its delay.
fn shutdown_signals() -> (
    impl std::future::Future<Output = ()>,
    impl std::future::Future<Output = ()>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    // One pair of streams for the process's life: a signal between two is never missed.
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    let nth = move |n: u32| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|seen| *seen >= n).await;
        }
    };
    (nth(1), nth(2))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
