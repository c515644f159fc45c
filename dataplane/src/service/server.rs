//! Where and how the control service listens, and the limits that keep a client from
//! exhausting the gateway.
//!
//! By default the service listens on a Unix socket readable and writable by its owner
//! only (mode 0600, set before the socket becomes reachable under its name). TCP is
//! served only with mutual TLS: a client must present a certificate signed by the
//! configured CA or the handshake fails. Next to `sluice.v1.Gateway` the server answers
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_api::proto::v1 as pb;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::gateway::GatewayService;
use super::rate::RateLimiter;

/// PEM material for serving on TCP with mutual TLS.
#[derive(Clone)]
pub struct ServerTls {
    /// This gateway's certificate chain and private key.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The CA that client certificates must be signed by.
    pub client_ca_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Where to listen.
#[derive(Clone, Debug)]
pub enum Listen {
    Unix(PathBuf),
    /// TCP, always with mutual TLS.
    Tcp {
        addr: SocketAddr,
        tls: ServerTls,
    },
}

/// What one client may ask of the service.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request or reply message, in bytes.
    pub max_message_bytes: usize,
    /// Requests in progress on one connection; more are refused at once with
    /// `RESOURCE_EXHAUSTED` rather than queued.
    pub concurrency_per_connection: usize,
    /// Requests in progress over all connections; more are refused at once.
    pub concurrency_total: usize,
    /// HTTP/2 streams one connection may open (including idle watches).
    pub max_concurrent_streams: u32,
    /// Longest a handler may take to answer (streams: to start answering).
    pub request_timeout: Duration,
    /// Requests a second over all clients, on average; more are refused at once with
    /// `RESOURCE_EXHAUSTED`.
    pub requests_per_second: u32,
    /// Requests allowed in a burst above that rate.
    pub request_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: sluice_api::MAX_MESSAGE_BYTES,
            concurrency_per_connection: 32,
            concurrency_total: 256,
            max_concurrent_streams: 64,
            request_timeout: Duration::from_secs(30),
            requests_per_second: 1_000,
            request_burst: 2_000,
        }
    }
}

/// Why the control service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {what}: {source}")]
    Bind { what: String, source: io::Error },
    #[error("{0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Serve(tonic::transport::Error),
}

/// A listening socket, ready to serve.
#[derive(Debug)]
pub enum Bound {
    Unix {
        listener: UnixListener,
        socket: SocketFile,
    },
    Tcp {
        listener: TcpListener,
        tls: ServerTls,
    },
}

impl Bound {
    /// The TCP address actually bound (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp { listener, .. } => listener.local_addr().ok(),
            Self::Unix { .. } => None,
        }
    }
}

/// The socket file a Unix listener created; removed when dropped, if it is still ours.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds `listen`. Must be called within a tokio runtime.
pub async fn bind(listen: &Listen) -> Result<Bound, ServeError> {
    match listen {
        Listen::Unix(path) => bind_unix(path),
        Listen::Tcp { addr, tls } => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what: addr.to_string(),
                    source,
                })?;
            Ok(Bound::Tcp {
                listener,
                tls: tls.clone(),
            })
        }
    }
}

fn bind_unix(path: &Path) -> Result<Bound, ServeError> {
    let bind_error = |source| ServeError::Bind {
        what: path.display().to_string(),
        source,
    };
    remove_stale_socket(path)?;
    // Bind inside a fresh directory only we can enter, restrict the socket, then move it
    // to its name: nobody can connect before the mode is 0600.
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        bind_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path has no file name",
        ))
    })?;
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
        let meta = std::fs::symlink_metadata(path)?;
        Ok::<_, io::Error>((listener, (meta.dev(), meta.ino())))
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    let (listener, identity) = result.map_err(bind_error)?;
    let socket = SocketFile {
        path: path.to_owned(),
        identity,
    };
    let listener = UnixListener::from_std(listener).map_err(bind_error)?;
    Ok(Bound::Unix { listener, socket })
}

/// Removes a socket left behind by a server that is gone; refuses to touch a live socket
/// or anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeError::Bind {
                what: path.display().to_string(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::SocketInUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| ServeError::Bind {
                what: path.display().to_string(),
                source,
            }),
        Err(source) => Err(ServeError::Bind {
            what: path.display().to_string(),
            source,
        }),
    }
}

/// Serves `gateway`, health and reflection on `bound` until `shutdown` completes.
pub async fn serve(
    bound: Bound,
    gateway: GatewayService,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::gateway_server::GatewayServer<GatewayService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let gateway = gateway.with_rate_limit(RateLimiter::new(
        limits.requests_per_second,
        limits.request_burst,
    ));
    let gateway = pb::gateway_server::GatewayServer::new(gateway)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);

    let mut server = Server::builder()
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .load_shed(true)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Bound::Tcp { tls, .. } = &bound {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
            .client_ca_root(Certificate::from_pem(&tls.client_ca_pem))
            .client_auth_optional(false);
        server = server.tls_config(config).map_err(ServeError::Tls)?;
    }
    let router = server
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.concurrency_total,
        ))
        .add_service(gateway)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    match bound {
        Bound::Unix { listener, socket } => {
            let result = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            drop(socket);
            result
        }
        Bound::Tcp { listener, .. } => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
    .map_err(ServeError::Serve)
}
