//! Transactions from YAML files: the sluice-api schema (the names the CRDs use), one or
//! more documents merged into one transaction that the gateway applies whole.
//!
//! ```yaml
//! upserts:
//!   - kind: Endpoint
//!     vni: 100
//!     ip: 10.0.1.10
//!     mac: "0a:58:0a:00:01:0a"
//!     host: 198.18.0.11
//! deletes:
//!   - kind: Endpoint
//!     vni: 100
//!     ip: 10.0.1.11
//! ```
//!
//! Parsing is `sluice_api::manifest` (the gateway reads its `tables.file` with it too).
//! YAML is read with serde_norway, the maintained fork of the deprecated serde_yaml.
//! Fields are checked as they are read (a bad CIDR fails here, with its line); checks
//! against table state are the gateway's.

use std::io::Read;
use std::path::Path;

use sluice_api::Transaction;

/// A YAML file that does not hold a transaction.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Yaml {
        path: String,
        source: serde_norway::Error,
    },
    #[error("{path}: no upserts and no deletes")]
    Empty { path: String },
}

/// Parses every YAML document of `text` as a transaction and concatenates them.
pub fn parse(text: &str) -> Result<Transaction, serde_norway::Error> {
    sluice_api::manifest::parse(text)
}

/// Reads a transaction from `path` (`-` is standard input).
pub fn load(path: &Path) -> Result<Transaction, ManifestError> {
    let name = path.display().to_string();
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| ManifestError::Read {
        path: name.clone(),
        source,
    })?;
    let txn = parse(&text).map_err(|source| ManifestError::Yaml {
        path: name.clone(),
        source,
    })?;
    if txn.upserts.is_empty() && txn.deletes.is_empty() {
        return Err(ManifestError::Empty { path: name });
    }
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use sluice_api::{Object, ObjectKey, Protocol};

    use super::*;

    #[test]
    fn documents_merge_into_one_transaction() {
        let txn = parse(
            "upserts:\n\
             - kind: Host\n  ip: 198.18.0.11\n  mac: \"02:00:00:00:00:11\"\n\
             ---\n\
             upserts:\n\
             - kind: Service\n  vni: 100\n  vip: 10.96.0.10\n  port: 80\n  protocol: TCP\n  \
               backends:\n  - {ip: 10.0.1.10, port: 8080}\n\
             deletes:\n\
             - {kind: Endpoint, vni: 100, ip: 10.0.1.11}\n",
        )
        .unwrap();
        assert_eq!(txn.upserts.len(), 2);
        let Object::Service(service) = &txn.upserts[1] else {
            panic!("not a service: {:?}", txn.upserts[1]);
        };
        assert_eq!(service.protocol, Protocol::Tcp);
        assert_eq!(service.backends[0].weight, 1, "weight defaults to 1");
        assert!(matches!(txn.deletes[..], [ObjectKey::Endpoint { .. }]));
    }

    #[test]
    fn bad_fields_are_named_with_their_line() {
        let err = parse(
            "upserts:\n\
             - kind: Subnet\n  vni: 100\n  cidr: 10.0.1.0/33\n  routerMac: \"02:aa:00:00:01:01\"\n  \
               bouncers: [198.18.0.1]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/33 exceeds /32"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = parse("upserts:\n- kind: Host\n  ip: 198.18.0.11\n  mack: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `mack`"), "{err}");
    }
}
