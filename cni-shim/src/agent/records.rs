//! What the agent has attached, one small JSON file per attachment under
//! `<state_dir>/attachments/`, written atomically and durably (temporary file, fsync,
//! rename, fsync of the directory), so a restarted agent knows every pod it set up. Each
//! fsync is a disk flush (about 4 ms on a virtual disk): the node agent writes records
//! while it does the kernel work of ADD, not before or after it.

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
