//! Where the controller listens: a Unix socket readable and writable by its owner only
//! (mode 0600, set before the socket is reachable under its name), or TCP with mutual
//! TLS, as the gateway does. Next to `sluice.v1.Controller` it answers
//! `grpc.health.v1.Health`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sluice_api::proto::v1 as pb;
use sluice_api::MAX_MESSAGE_BYTES;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::service::ControllerService;

/// Longest a stopping server waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Where to listen, as written on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `unix:///run/sluice/controller.sock`
    Unix(PathBuf),
    /// `https://0.0.0.0:7444`: TCP, always with mutual TLS.
    Https(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = ServeError;
    fn from_str(s: &str) -> Result<Self, ServeError> {
        let bad = || ServeError::BadAddress(s.to_owned());
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("https://").ok_or_else(bad)?;
        rest.trim_end_matches('/')
            .parse()
            .map(Self::Https)
            .map_err(|_| bad())
    }
}

/// PEM material for TCP with mutual TLS.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The CA client certificates must be signed by.
    pub client_ca_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Why the controller could not listen or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0:?} is not a listen address: use unix:///path/to/socket or https://ADDR:PORT")]
    BadAddress(String),
    #[error("{0} needs --tls-cert, --tls-key and --client-ca: TCP is served only with mutual TLS")]
    MissingTls(String),
    #[error("binding {what}: {source}")]
    Bind { what: String, source: io::Error },
    #[error("{0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error("serving: {0}")]
    Serve(tonic::transport::Error),
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub enum Bound {
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    Tcp {
        listener: TcpListener,
        tls: ServerTls,
    },
}

impl Bound {
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp { listener, .. } => listener.local_addr().ok(),
            Self::Unix { .. } => None,
        }
    }
}

/// Binds `addr`. Must be called within a tokio runtime.
pub async fn bind(addr: &ListenAddr, tls: Option<ServerTls>) -> Result<Bound, ServeError> {
    match addr {
        ListenAddr::Unix(path) => bind_unix(path),
        ListenAddr::Https(socket) => {
            let tls = tls.ok_or_else(|| ServeError::MissingTls(format!("https://{socket}")))?;
            let listener = TcpListener::bind(socket)
                .await
                .map_err(|source| ServeError::Bind {
                    what: socket.to_string(),
                    source,
                })?;
            Ok(Bound::Tcp { listener, tls })
        }
    }
}

fn bind_unix(path: &Path) -> Result<Bound, ServeError> {
    let bind_error = |source| ServeError::Bind {
        what: path.display().to_string(),
        source,
    };
    remove_stale_socket(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(bind_error)?;
    let name = path.file_name().ok_or_else(|| {
        bind_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path has no file name",
        ))
    })?;
    // Bind inside a fresh directory only we can enter, restrict the socket, then move it
    // to its name: nobody can connect before the mode is 0600.
    let staging = parent.join(format!(
        ".{}.{}.staging",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(bind_error)?;
    let staged = staging.join("s");
    let result = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        listener.set_nonblocking(true)?;
        Ok::<_, io::Error>(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    let listener = UnixListener::from_std(result.map_err(bind_error)?).map_err(bind_error)?;
    Ok(Bound::Unix {
        listener,
        path: path.to_owned(),
    })
}

fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let bind_error = |source| ServeError::Bind {
        what: path.display().to_string(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(bind_error(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::SocketInUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(bind_error)
        }
        Err(e) => Err(bind_error(e)),
    }
}

/// Serves `service` and health on `bound` until `shutdown` completes; removes the Unix
/// socket afterwards.
pub async fn serve(
    bound: Bound,
    service: ControllerService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::controller_server::ControllerServer<ControllerService>>()
        .await;
    let controller = pb::controller_server::ControllerServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut server = Server::builder()
        .concurrency_limit_per_connection(64)
        .timeout(Duration::from_secs(60))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Bound::Tcp { tls, .. } = &bound {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
            .client_ca_root(Certificate::from_pem(&tls.client_ca_pem))
            .client_auth_optional(false);
        server = server.tls_config(config).map_err(ServeError::Tls)?;
    }
    let router = server.add_service(controller).add_service(health_service);
    // Once asked to stop, wait at most SHUTDOWN_GRACE for open connections (a client
    // holding an idle channel would otherwise keep the server up until keepalive ends).
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = fired_tx.send(());
    };
    let grace = async move {
        if fired_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = match bound {
        Bound::Unix { listener, path } => {
            let result = tokio::select! {
                r = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown) => r,
                () = grace => Ok(()),
            };
            let _ = std::fs::remove_file(&path);
            result
        }
        Bound::Tcp { listener, .. } => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::select! {
                r = router.serve_with_incoming_shutdown(incoming, shutdown) => r,
                () = grace => Ok(()),
            }
        }
    };
    result.map_err(ServeError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "unix:///run/sluice/controller.sock"
                .parse::<ListenAddr>()
                .unwrap(),
            ListenAddr::Unix("/run/sluice/controller.sock".into())
        );
        assert_eq!(
            "https://127.0.0.1:7444".parse::<ListenAddr>().unwrap(),
            ListenAddr::Https("127.0.0.1:7444".parse().unwrap())
        );
        for bad in ["unix://rel.sock", "http://1.2.3.4:5", "https://host:5", "x"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
