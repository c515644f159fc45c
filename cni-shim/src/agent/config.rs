//! The node agent's configuration file (`config/node.toml` documents every field).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_dataplane::stubs::DEFAULT_PIN_DIR;

use crate::DEFAULT_SOCKET;

/// Bytes of outer headers and options every pod packet may carry (DESIGN.md: pods get
/// the underlay MTU minus 100).
pub const ENCAP_MTU_OVERHEAD: u32 = 100;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name; defaults to the host name.
    #[serde(default)]
    pub node: String,
    /// The underlay interface: transit stub, node identity, where Geneve leaves.
    pub underlay_interface: String,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Attachment records and the static allocator's leases.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The controller: `unix:///path` or `https://host:port` (exclusive with
    /// `static_allocation`).
    #[serde(default)]
    pub controller: Option<String>,
    /// Mutual TLS to an `https://` controller: required for one, refused otherwise.
    #[serde(default)]
    pub controller_tls: Option<ControllerTls>,
    /// A static allocation file standing in for the controller.
    #[serde(default)]
    pub static_allocation: Option<PathBuf>,
    /// Pod MTU: "underlay" (underlay interface MTU minus 100) or a number.
    #[serde(default)]
    pub mtu: MtuSource,
}

/// `[controller_tls]`: PEM files for mutual TLS with the controller.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerTls {
    /// The CA that signed the controller's certificate.
    pub ca: PathBuf,
    /// This node agent's client certificate, signed by the CA the controller trusts.
    pub cert: PathBuf,
    /// The key of `cert`.
    pub key: PathBuf,
}

impl ControllerTls {
    /// The files as `sluice-api`'s client takes them.
    pub fn client_tls(&self) -> sluice_api::client::ClientTls {
        sluice_api::client::ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    fn check(&self, controller: &str) -> Result<(), String> {
        if !controller.starts_with("https://") {
            return Err(format!(
                "controller_tls: only for an https:// controller, not {controller:?}"
            ));
        }
        for (field, path) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if !path.is_absolute() {
                return Err(format!(
                    "controller_tls.{field}: {:?} must be an absolute path to a PEM file",
                    path.display().to_string()
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawMtu")]
pub enum MtuSource {
    /// The underlay interface's MTU minus [`ENCAP_MTU_OVERHEAD`].
    #[default]
    Underlay,
    Fixed(u32),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMtu {
    Number(u32),
    Word(String),
}

impl TryFrom<RawMtu> for MtuSource {
    type Error = String;
    fn try_from(raw: RawMtu) -> Result<Self, String> {
        match raw {
            RawMtu::Number(n) => Ok(Self::Fixed(n)),
            RawMtu::Word(w) if w == "underlay" => Ok(Self::Underlay),
            RawMtu::Word(w) => Err(format!("mtu {w:?}: expected \"underlay\" or a number")),
        }
    }
}

fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}
fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/sluice/node".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let config = Self::parse(&text).map_err(invalid)?;
        if let Some(tls) = &config.controller_tls {
            // Missing certificates fail here, at start, not at the first pod.
            for (field, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                std::fs::metadata(file).map_err(|e| {
                    invalid(format!("controller_tls.{field}: {}: {e}", file.display()))
                })?;
            }
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        match (&config.controller, &config.static_allocation) {
            (Some(_), Some(_)) => {
                return Err("controller and static_allocation are exclusive: name one".into())
            }
            (None, None) => return Err("name either controller or static_allocation".into()),
            _ => {}
        }
        match (&config.controller, &config.controller_tls) {
            (Some(c), None) if c.starts_with("https://") => {
                return Err(format!(
                    "controller {c:?} accepts only mutual TLS: add [controller_tls] with \
                     ca, cert and key (PEM file paths)"
                ))
            }
            (Some(c), Some(tls)) => tls.check(c)?,
            (None, Some(_)) => {
                return Err("controller_tls: only with an https:// controller".into())
            }
            _ => {}
        }
        if config.underlay_interface.is_empty() {
            return Err("underlay_interface: must name an interface".into());
        }
        if let MtuSource::Fixed(mtu) = config.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(format!("mtu: {mtu} is outside 576..=65535"));
            }
        }
        if config.node.is_empty() {
            config.node = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "node".into());
        }
        Ok(config)
    }

    /// The pod MTU given the underlay interface's MTU.
    pub fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        match self.mtu {
            MtuSource::Fixed(m) => m,
            MtuSource::Underlay => underlay_mtu.saturating_sub(ENCAP_MTU_OVERHEAD),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = NodeConfig::parse(
            "node = \"w1\"\nunderlay_interface = \"eth0\"\nstatic_allocation = \"/a.toml\"\n",
        )
        .expect("valid");
        assert_eq!(c.pin_dir, PathBuf::from("/sys/fs/bpf/sluice"));
        assert_eq!(c.socket, PathBuf::from("/run/sluice/node.sock"));
        assert_eq!(c.pod_mtu(1500), 1400);
    }

    #[test]
    fn mtu_is_underlay_or_a_number() {
        let base = "underlay_interface = \"eth0\"\ncontroller = \"unix:///c.sock\"\n";
        let c = NodeConfig::parse(&format!("{base}mtu = \"underlay\"")).expect("valid");
        assert_eq!(c.mtu, MtuSource::Underlay);
        let c = NodeConfig::parse(&format!("{base}mtu = 1350")).expect("valid");
        assert_eq!(c.pod_mtu(9000), 1350);
        assert!(NodeConfig::parse(&format!("{base}mtu = \"jumbo\"")).is_err());
        assert!(NodeConfig::parse(&format!("{base}mtu = 100"))
            .unwrap_err()
            .contains("576"));
    }

    #[test]
    fn allocator_source_is_exactly_one() {
        let e = NodeConfig::parse("underlay_interface = \"eth0\"").unwrap_err();
        assert!(e.contains("either controller or static_allocation"), "{e}");
        let e = NodeConfig::parse(
            "underlay_interface = \"eth0\"\ncontroller = \"unix:///c\"\nstatic_allocation = \"/a\"",
        )
        .unwrap_err();
        assert!(e.contains("exclusive"), "{e}");
        let e = NodeConfig::parse("underlay_interface = \"eth0\"\ncontroler = \"x\"").unwrap_err();
        assert!(e.contains("controler"), "{e}");
    }

    #[test]
    fn an_https_controller_needs_controller_tls() {
        let base = "underlay_interface = \"eth0\"\ncontroller = \"https://c.example:7441\"\n";
        let e = NodeConfig::parse(base).unwrap_err();
        assert!(
            e.contains("add [controller_tls] with ca, cert and key"),
            "{e}"
        );
        let tls =
            "[controller_tls]\nca = \"/t/ca.crt\"\ncert = \"/t/tls.crt\"\nkey = \"/t/tls.key\"\n";
        let c = NodeConfig::parse(&format!("{base}{tls}")).expect("valid");
        assert_eq!(
            c.controller_tls.map(|t| t.client_tls().key),
            Some(PathBuf::from("/t/tls.key"))
        );
        let e = NodeConfig::parse(&format!(
            "{base}[controller_tls]\nca = \"/t/ca.crt\"\ncert = \"/t/tls.crt\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("key"), "{e}");
        let e = NodeConfig::parse(&format!("{base}{}", tls.replace("/t/tls.crt", "tls.crt")))
            .unwrap_err();
        assert!(e.starts_with("controller_tls.cert:"), "{e}");
        let unix = "underlay_interface = \"eth0\"\ncontroller = \"unix:///c.sock\"\n";
        let e = NodeConfig::parse(&format!("{unix}{tls}")).unwrap_err();
        assert!(e.starts_with("controller_tls: only for an https://"), "{e}");
    }

    #[test]
    fn missing_tls_files_fail_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "underlay_interface = \"eth0\"\ncontroller = \"https://c:7441\"\n\
             [controller_tls]\nca = \"/nonexistent/ca.crt\"\ncert = \"/nonexistent/tls.crt\"\n\
             key = \"/nonexistent/tls.key\"\n",
        )
        .unwrap();
        let e = NodeConfig::load(&file).unwrap_err().to_string();
        assert!(e.contains("controller_tls.ca: /nonexistent/ca.crt"), "{e}");
    }
}
