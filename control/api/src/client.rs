//! Connecting to a gateway's control service.
//!
//! A gateway listens on a Unix socket (`unix:///run/sluice/gateway.sock`) or on TCP with
//! mutual TLS (`https://gw1.example:7443`); plain-text TCP is refused here as it is on
//! the server. This module only opens channels: what is sent over them is the caller's.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::proto::v1::gateway_client::GatewayClient;
use crate::MAX_MESSAGE_BYTES;

/// Where a gateway's control service listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `unix:///path/to/socket`
    Unix(PathBuf),
    /// `https://host:port`: TCP with mutual TLS.
    Https { host: String, port: u16 },
}

/// Why a gateway could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0:?} is not a server address: use unix:///path/to/socket or https://host:port")]
    BadTarget(String),
    #[error("{target} needs --ca, --cert and --key: the gateway accepts TCP only with mutual TLS")]
    MissingTls { target: String },
    #[error("reading {what} from {path}: {source}")]
    ReadPem {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connecting to {target}: {source}")]
    Transport {
        target: String,
        source: tonic::transport::Error,
    },
}

impl FromStr for Target {
    type Err = ConnectError;
    fn from_str(s: &str) -> Result<Self, ConnectError> {
        let bad = || ConnectError::BadTarget(s.to_owned());
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("https://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        Ok(Self::Https {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Https { host, port } => write!(f, "https://{host}:{port}"),
        }
    }
}

/// PEM files for mutual TLS: the CA that signed the gateway's certificate, and this
/// client's certificate and key (signed by the CA the gateway trusts).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn read_pem(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::ReadPem {
        what,
        path: path.clone(),
        source,
    })
}

/// Opens a channel to `target`. TCP targets need `tls`; Unix sockets ignore it.
pub async fn connect(target: &Target, tls: Option<&ClientTls>) -> Result<Channel, ConnectError> {
    let transport = |source| ConnectError::Transport {
        target: target.to_string(),
        source,
    };
    match target {
        Target::Unix(path) => {
            let path = path.clone();
            // The URI is required by the HTTP/2 layer but never resolved: the connector
            // below ignores it and dials the socket.
            Endpoint::from_static("http://gateway.sluice.invalid")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .map_err(transport)
        }
        Target::Https { host, .. } => {
            let tls = tls.ok_or_else(|| ConnectError::MissingTls {
                target: target.to_string(),
            })?;
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_pem("the CA", &tls.ca)?))
                .identity(Identity::from_pem(
                    read_pem("the client certificate", &tls.cert)?,
                    read_pem("the client key", &tls.key)?,
                ))
                .domain_name(host.clone());
            Endpoint::from_shared(target.to_string())
                .map_err(transport)?
                .tls_config(config)
                .map_err(transport)?
                .connect()
                .await
                .map_err(transport)
        }
    }
}

/// A `Gateway` client over `channel` that accepts messages up to [`MAX_MESSAGE_BYTES`].
pub fn gateway(channel: Channel) -> GatewayClient<Channel> {
    GatewayClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "unix:///run/sluice/gw.sock".parse::<Target>().unwrap(),
            Target::Unix("/run/sluice/gw.sock".into())
        );
        assert_eq!(
            "https://gw1:7443".parse::<Target>().unwrap(),
            Target::Https {
                host: "gw1".into(),
                port: 7443
            }
        );
        for bad in [
            "http://gw1:7443",
            "unix://relative.sock",
            "https://gw1",
            "https://:7443",
            "gw1:7443",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
