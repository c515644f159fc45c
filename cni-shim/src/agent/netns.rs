//! Entering a pod's network namespace from the node agent's own thread and coming back.
//!
//! The agent does all kernel work on one dedicated thread (see [`super::node`]); that
//! thread steps into a pod's namespace only for the few calls that must run there
//! (opening a netlink socket, attaching the pod-side XDP program) and the guard steps it
//! back, even on an early return.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
}

/// A network namespace held open by a file.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Netns {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The calling thread's current namespace.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Moves the calling thread into this namespace until the guard drops, when it
    /// returns to `home`.
    pub fn enter<'a>(&self, home: &'a Netns) -> Result<Entered<'a>, NetnsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        Ok(Entered { home })
    }
}

/// While alive, the thread is in another namespace.
#[derive(Debug)]
pub struct Entered<'a> {
    home: &'a Netns,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        // Returning to a namespace we came from cannot fail short of the kernel losing
        // it; going on in the wrong namespace would corrupt everything after, so the
        // process ends here, saying why in one line (a panic would only end the thread,
        // maybe mid-unwind, and leave an agent that answers but can do nothing).
        if let Err(e) = setns(self.home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "sluice-node: fatal: returning to the agent's network namespace ({}): {e}; aborting",
                self.home.path.display()
            );
            std::process::abort();
        }
    }
}
