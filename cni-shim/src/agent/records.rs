//! What the agent has attached, one small JSON file per attachment under
//! `<state_dir>/attachments/`, written atomically and durably (temporary file, fsync,
//! rename, fsync of the directory), so a restarted agent knows every pod it set up. Each
//! fsync is a disk flush (about 4 ms on a virtual disk): the node agent writes records
//! while it does the kernel work of ADD, not before or after it.
//!
//! Also here: releases the allocator could not take when they were due (a restarted agent
//! found a pod gone while the controller was unreachable), one empty file per attachment
//! under `<state_dir>/pending-releases/`, retried until the allocator answers.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::allocator::Allocation;

/// One pod interface the agent set up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    /// The network config's `name` the attachment was made for: CNI GC of one network
    /// collects only its own attachments. Empty in records written before agents kept it
    /// (a *legacy* record): GC of any network leaves those alone while their pod's veth
    /// exists, and a request naming the attachment with its network (GC's
    /// valid-attachments, CHECK, a repeated ADD) fills it in.
    #[serde(default)]
    pub network_name: String,
    pub netns: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub mtu: u32,
    pub allocation: Allocation,
}

impl Record {
    pub fn pod_ip(&self) -> Ipv4Addr {
        self.allocation.ip
    }
}

#[derive(Debug, thiserror::Error)]
#[error("attachment record {path}: {source}")]
pub struct RecordError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn open(state_dir: &Path) -> Result<Self, RecordError> {
        let dir = state_dir.join("attachments");
        std::fs::create_dir_all(&dir).map_err(|source| RecordError {
            path: dir.clone(),
            source,
        })?;
        Ok(Records { dir })
    }

    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        // Container ids and interface names never contain '/', and ':' cannot appear in
        // either, so the file name is unambiguous.
        self.dir.join(format!("{container_id}:{ifname}.json"))
    }

    pub fn write(&self, record: &Record) -> Result<(), RecordError> {
        let path = self.path(&record.container_id, &record.ifname);
        let tmp = path.with_extension("json.tmp");
        let err = |source| RecordError {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(record)
            .map_err(std::io::Error::other)
            .map_err(err)?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        // The rename is durable once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }

    pub fn read(&self, container_id: &str, ifname: &str) -> Result<Option<Record>, RecordError> {
        Self::read_path(&self.path(container_id, ifname))
    }

    fn read_path(path: &Path) -> Result<Option<Record>, RecordError> {
        let err = |source| RecordError {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Ok(false) when there was none.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<bool, RecordError> {
        let path = self.path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(RecordError { path, source }),
        }
    }

    /// Every record; unreadable files are reported and skipped (and left in place for
    /// an operator to look at).
    pub fn all(&self) -> Result<Vec<Record>, RecordError> {
        let err = |source| RecordError {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match Self::read_path(&path) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping {e}"),
            }
        }
        Ok(out)
    }
}

/// Releases owed to the allocator: `<state_dir>/pending-releases/<container>:<ifname>`,
/// empty files created durably before the attachment's record is removed, so a release
/// that failed is retried, across restarts too, until the allocator takes it.
#[derive(Clone, Debug)]
pub struct PendingReleases {
    dir: PathBuf,
}

impl PendingReleases {
    pub fn open(state_dir: &Path) -> Result<Self, RecordError> {
        let dir = state_dir.join("pending-releases");
        std::fs::create_dir_all(&dir).map_err(|source| RecordError {
            path: dir.clone(),
            source,
        })?;
        Ok(PendingReleases { dir })
    }

    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}:{ifname}"))
    }

    /// Records that (container_id, ifname) still has to be released; durable on return.
    pub fn add(&self, container_id: &str, ifname: &str) -> Result<(), RecordError> {
        let path = self.path(container_id, ifname);
        let err = |source| RecordError {
            path: path.clone(),
            source,
        };
        std::fs::File::create(&path)
            .and_then(|f| f.sync_all())
            .map_err(err)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }

    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), RecordError> {
        let path = self.path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError { path, source }),
        }
    }

    /// Every (container_id, ifname) owed a release.
    pub fn all(&self) -> Result<Vec<(String, String)>, RecordError> {
        let err = |source| RecordError {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let name = entry.map_err(err)?.file_name();
            let name = name.to_string_lossy();
            // Container ids never contain ':' (CNI's rule), so the last ':' splits.
            if let Some((cid, ifname)) = name.rsplit_once(':') {
                out.push((cid.to_owned(), ifname.to_owned()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as agents wrote it before they kept the network name.
    const LEGACY: &str = r#"{
      "container_id": "c1", "ifname": "eth0", "netns": "/run/netns/p1",
      "host_ifname": "sl0123456789a", "host_ifindex": 7, "host_mac": [2,0,0,0,0,7],
      "mtu": 1400,
      "allocation": {"vni": 100, "ip": "10.1.0.10", "prefix_len": 24,
        "mac": [10,88,10,1,0,10], "router_ip": "10.1.0.1", "router_mac": [2,0,94,0,1,1],
        "bouncers": [["198.18.0.1", [2,0,0,0,0,1]]], "mtu": null, "vpc": "a",
        "subnet": "web"}
    }"#;

    #[test]
    fn legacy_records_read_with_an_empty_network_name_and_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = Records::open(dir.path()).expect("open");
        std::fs::write(dir.path().join("attachments/c1:eth0.json"), LEGACY).expect("write");
        let mut r = records.read("c1", "eth0").expect("read").expect("present");
        assert_eq!(r.network_name, "");
        assert_eq!(r.allocation.ip, Ipv4Addr::new(10, 1, 0, 10));
        r.network_name = "sluice".into();
        records.write(&r).expect("write");
        assert_eq!(records.all().expect("all"), vec![r]);
    }

    #[test]
    fn pending_releases_survive_a_reopen_and_remove_idempotently() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pending = PendingReleases::open(dir.path()).expect("open");
        pending.add("c1", "eth0").expect("add");
        pending.add("c.2-x", "net1").expect("add");
        let reopened = PendingReleases::open(dir.path()).expect("reopen");
        let mut all = reopened.all().expect("all");
        all.sort();
        assert_eq!(
            all,
            vec![
                ("c.2-x".to_owned(), "net1".to_owned()),
                ("c1".to_owned(), "eth0".to_owned())
            ]
        );
        reopened.remove("c1", "eth0").expect("remove");
        reopened.remove("c1", "eth0").expect("again");
        assert_eq!(reopened.all().expect("all").len(), 1);
    }
}
