//! `crius daemon`: takes the locks, opens the store, serves CRI on the unix socket and shuts
//! down cleanly on SIGTERM/SIGINT.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::cgroups;
use crate::config::Config;
use crate::container::Containers;
use crate::context::Context;
use crate::image::Images;
use crate::lockfile::{LockError, LockFile};
use crate::sandbox::Sandboxes;
use crate::sandbox::agent_binary::AgentBinary;
use crate::server;
use crate::server::authority::AuthorityFix;
use crate::server::runtime::streaming::StreamBackend;
use crate::store::{Store, StoreError};
use crate::streaming::server::StreamingServer;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image store: {0}")]
    Images(crate::error::Error),
    #[error("pod sandboxes: {0}")]
    Sandboxes(crate::error::Error),
    #[error("containers: {0}")]
    Containers(crate::error::Error),
    #[error(transparent)]
    AgentBinary(#[from] crate::sandbox::agent_binary::AgentBinaryError),
    #[error("the systemd cgroup driver: {0}")]
    Systemd(#[from] crate::cgroups::systemd::SystemdError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Streaming(#[from] crate::streaming::server::ServerError),
    #[error("serving metrics on {0}: {1}")]
    Metrics(String, std::io::Error),
    #[error("serving CRI on {socket}: {source}")]
    Serve {
        socket: PathBuf,
        source: tonic::transport::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    let socket = config.socket_path();
    create_private_dir(&config.root)?;
    create_private_dir(&config.state)?;
    let _root_lock = LockFile::acquire(
        &config.root.join("crius.lock"),
        &format!("root {}", config.root.display()),
    )?;
    let _socket_lock = LockFile::acquire(
        &PathBuf::from(format!("{}.lock", socket.display())),
        &format!("socket {}", socket.display()),
    )?;

    let store = Arc::new(Store::open(&config.db_path())?);
    let images = Images::open(&config.root, store.clone(), config.registry.clone())
        .await
        .map_err(DaemonError::Images)?;
    let cgroups = cgroups::detect().map_err(io_err("reading the cgroup layout"))?;
    tracing::info!(
        version = ?cgroups.version,
        controllers = %cgroups.controllers.join(","),
        "cgroups detected"
    );
    let driver = cgroup_driver(&config, cgroups.version).await?;
    let shutdown_timeout = config.shutdown_timeout();
    let agent = AgentBinary::load(config.agent_path.as_deref())?;
    let sandboxes = Sandboxes::new(
        store.clone(),
        &config.state,
        config.cni.clone(),
        cgroups.version,
        driver.clone(),
        agent,
    )
    .map_err(DaemonError::Sandboxes)?;
    let containers = Containers::load(
        store.clone(),
        images.clone(),
        &config.root,
        &config.state,
        cgroups.version,
        driver,
    )
    .map_err(DaemonError::Containers)?;
    create_reported_dirs(&images, &containers)?;
    let tls = match (&config.streaming.tls_cert, &config.streaming.tls_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    let streaming = StreamingServer::bind(
        &config.streaming.address,
        tls,
        std::time::Duration::from_secs(config.streaming.token_ttl_secs),
    )
    .await?;
    tracing::info!(url = %streaming.base_url(), "streaming server listening");
    let ctx = Arc::new(Context {
        config,
        store,
        images,
        sandboxes,
        containers,
        cgroups,
        streaming,
    });
    ctx.streaming
        .serve(Arc::new(StreamBackend { ctx: ctx.clone() }));
    // Before serving: what the pod agents did while no daemon listened is recorded.
    crate::container::watch::sync_all(&ctx)
        .await
        .map_err(DaemonError::Containers)?;
    if !ctx.config.metrics.address.is_empty() {
        let address = ctx.config.metrics.address.clone();
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| DaemonError::Metrics(address.clone(), e))?;
        tracing::info!(address = %address, "serving Prometheus metrics on /metrics");
        let scraped = ctx.clone();
        tokio::spawn(crate::metrics::serve(listener, move || {
            let ctx = scraped.clone();
            async move { metrics_snapshot(&ctx).await }
        }));
    }

    let listener = bind_socket(&socket)?;
    tracing::info!(
        socket = %socket.display(),
        version = env!("CARGO_PKG_VERSION"),
        "crius is serving CRI v1"
    );

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Each connection goes through AuthorityFix, so clients whose :authority h2 rejects (gRPC
    // C-core, grpc-java) are served too.
    let incoming = UnixListenerStream::new(listener).map_ok(AuthorityFix::new);
    let serve = tokio::spawn(
        server::router(ctx).serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }),
    );
    let signal_name = wait_for_stop_signal().await?;
    tracing::info!(
        signal = signal_name,
        "shutting down: no new RPCs, waiting for in-flight ones"
    );
    let _ = stop.send(());
    match tokio::time::timeout(shutdown_timeout, serve).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(source))) => {
            remove_socket(&socket);
            return Err(DaemonError::Serve { socket, source });
        }
        Ok(Err(join_error)) => tracing::error!(error = %join_error, "server task failed"),
        Err(_) => tracing::warn!(
            timeout_secs = shutdown_timeout.as_secs(),
            "in-flight RPCs did not finish in time; exiting anyway"
        ),
    }
    remove_socket(&socket);
    tracing::info!("stopped");
    Ok(())
}

/// The configured cgroup driver, connected: with systemd, to its manager over the system bus.
async fn cgroup_driver(
    config: &Config,
    version: cgroups::CgroupVersion,
) -> Result<cgroups::Driver, DaemonError> {
    match config.cgroup_driver {
        crate::config::CgroupDriver::Cgroupfs => {
            cgroups::set_driver_kind(cgroups::DriverKind::Cgroupfs);
            Ok(cgroups::Driver::Cgroupfs)
        }
        crate::config::CgroupDriver::Systemd => {
            let systemd = cgroups::systemd::Systemd::connect(version).await?;
            cgroups::set_driver_kind(cgroups::DriverKind::Systemd);
            tracing::info!("cgroup driver: systemd");
            Ok(cgroups::Driver::Systemd(Arc::new(systemd)))
        }
    }
}

/// Root and state dirs: created with their parents, not readable by other users.
fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(io_err(format!("creating {}", dir.display())))
}

/// The directories crius names to kubelet: the image filesystem (ImageFsInfo) and the
/// writable layers' (ContainerStats). kubelet's stats and eviction managers stat them as soon
/// as the runtime answers, before any pull or container would create them.
fn create_reported_dirs(images: &Images, containers: &Containers) -> Result<(), DaemonError> {
    create_private_dir(images.snapshots_dir())?;
    create_private_dir(containers.writable_layers_dir())
}

/// Binds the CRI socket (mode 0660). We hold the socket's lock, so a socket file already there
/// was left by a daemon that died: it is replaced. Anything else at that path is refused.
fn bind_socket(socket: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = socket.parent() {
        create_private_dir(dir)?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            tracing::info!(socket = %socket.display(), "replacing a stale socket");
            std::fs::remove_file(socket).map_err(io_err(format!(
                "removing stale socket {}",
                socket.display()
            )))?;
        }
        Ok(_) => {
            return Err(DaemonError::Io {
                context: format!("binding {}", socket.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                ),
            });
        }
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(socket).map_err(io_err(format!("binding {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err(format!("setting the mode of {}", socket.display())))?;
    Ok(listener)
}

fn remove_socket(socket: &Path) {
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the socket");
    }
}

async fn wait_for_stop_signal() -> Result<&'static str, DaemonError> {
    let mut term = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Pods, containers and agents by state, for a metrics scrape.
async fn metrics_snapshot(ctx: &Context) -> crate::metrics::Snapshot {
    use crate::container::record::ContainerState;
    use crate::sandbox::record::SandboxState;
    let mut snapshot = crate::metrics::Snapshot::default();
    for pod in ctx.sandboxes.list().unwrap_or_default() {
        match pod.state {
            SandboxState::Ready => snapshot.pods_ready += 1,
            SandboxState::NotReady => snapshot.pods_not_ready += 1,
        }
        if pod.agent.is_some_and(|a| a.is_alive()) {
            snapshot.agents_running += 1;
        }
    }
    for state in ["created", "running", "exited"] {
        snapshot.containers.insert(state, 0);
    }
    for c in ctx.containers.list() {
        let state = match c.state {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
        };
        *snapshot.containers.entry(state).or_default() += 1;
    }
    snapshot
}
