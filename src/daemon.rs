//! `crius daemon`: takes the locks, opens the store, serves CRI on the unix socket and shuts
//! down cleanly on SIGTERM/SIGINT. Under systemd (`Type=notify`, hack/crius.service) it tells
//! the service manager when it is ready and when it stops (see [`sd_notify`]).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
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
    #[error("the CRI socket {socket} does not serve HTTP/2: {source}")]
    NotServing {
        socket: PathBuf,
        source: std::io::Error,
    },
}

/// Why a notification to the service manager could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract name (@...)")]
    BadAddress(String),
    #[error("notifying the service manager on {socket:?}: {source}")]
    Send {
        socket: String,
        source: std::io::Error,
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
    // Start-up (configuration, the store, recovery, the servers' set-up) ran code that will not
    // run again: measured, 10 MB of the binary's text stayed mapped after it.
    crate::linux::trim::drop_clean_file_pages();
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
    // Under systemd (Type=notify): ready once the socket answers an HTTP/2 handshake, so
    // `systemctl start` returns when kubelet can connect, and units ordered after us start then.
    if std::env::var_os(NOTIFY_SOCKET).is_some() {
        let probe = socket.clone();
        tokio::task::spawn_blocking(move || http2_answers(&probe))
            .await
            .map_err(|e| DaemonError::NotServing {
                socket: socket.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| DaemonError::NotServing {
                socket: socket.clone(),
                source,
            })?;
        notify_service_manager(&format!(
            "READY=1\nSTATUS=serving CRI on {}",
            socket.display()
        ));
    }
    let signal_name = wait_for_stop_signal().await?;
    tracing::info!(
        signal = signal_name,
        "shutting down: no new RPCs, waiting for in-flight ones"
    );
    notify_service_manager("STOPPING=1\nSTATUS=stopping: waiting for in-flight RPCs");
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

/// The environment variable systemd names its notification socket in.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` to the service manager, logging (not failing) when that does not work: a
/// missed READY=1 makes systemd time the start out, which says more than an early exit would.
fn notify_service_manager(state: &str) {
    match sd_notify(state) {
        Ok(true) => tracing::debug!(state, "notified the service manager"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot notify the service manager"),
    }
}

/// sd_notify(3) without libsystemd: one datagram with `state` (newline-separated `KEY=VALUE`
/// lines such as `READY=1`) to the unix datagram socket named by `$NOTIFY_SOCKET` — a path, or
/// an abstract socket name written with a leading `@`. Returns false, sending nothing, when the
/// variable is not set (not started by systemd, or not `Type=notify`).
///
/// The variable stays set (the daemon never changes its own environment); the pod agents are
/// started without it, and systemd's default `NotifyAccess=main` ignores anyone else anyway.
pub fn sd_notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(target) => notify_to(&target, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` in one datagram to the notification socket `target` (`/path` or `@name`).
fn notify_to(target: &OsStr, state: &str) -> Result<(), NotifyError> {
    let address = notify_address(target)?;
    let send_error = |source| NotifyError::Send {
        socket: target.to_string_lossy().into_owned(),
        source,
    };
    let socket = UnixDatagram::unbound().map_err(send_error)?;
    socket
        .send_to_addr(state.as_bytes(), &address)
        .map_err(send_error)?;
    Ok(())
}

/// `$NOTIFY_SOCKET` as a socket address: `@name` is the abstract name `name`, `/path` a path.
fn notify_address(target: &OsStr) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::BadAddress(target.to_string_lossy().into_owned());
    let bytes = target.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(|_| bad()),
        Some(b'/') => SocketAddr::from_pathname(Path::new(target)).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// Connects to the CRI socket and checks that an HTTP/2 server answers the client preface
/// with its SETTINGS frame: the socket serves, not merely exists. Bounded by 10 s.
fn http2_answers(socket: &Path) -> std::io::Result<()> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let mut stream = UnixStream::connect(socket)?;
    let timeout = Some(std::time::Duration::from_secs(10));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    stream.write_all(PREFACE)?;
    stream.write_all(&SETTINGS)?;
    let mut header = [0u8; 9];
    stream.read_exact(&mut header)?;
    if header[3] != 4 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the first frame has type {}, not SETTINGS", header[3]),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifies_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=x").unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=x");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!("crius-test-notify-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    fn refuses_relative_and_empty_addresses() {
        for target in ["", "run/notify", "notify"] {
            assert!(matches!(
                notify_to(OsStr::new(target), "READY=1"),
                Err(NotifyError::BadAddress(_))
            ));
        }
    }

    #[test]
    fn a_missing_socket_is_a_send_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = notify_to(dir.path().join("none").as_os_str(), "READY=1").unwrap_err();
        assert!(matches!(err, NotifyError::Send { .. }), "{err}");
    }
}
