//! The cores the gateway may run on, for `cores.workers = "auto"` (and `control =
//! "auto"`): its cgroup's `cpuset.cpus.effective` (cgroup v2), which is where the
//! kubelet's static CPU manager puts a Guaranteed pod's exclusive cores, or the
//! process's affinity mask (`sched_getaffinity`) when no cgroup v2 cpuset can be read.
//!
//! This only reads files and the affinity mask; it never changes either. The paths are
//! injectable so the resolution is tested on fixture trees.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::cpulist;

/// Where the cgroup files are: `/proc/self/cgroup` and the cgroup v2 mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupPaths {
    pub proc_self_cgroup: PathBuf,
    pub cgroup_root: PathBuf,
}

impl Default for CgroupPaths {
    fn default() -> Self {
        Self {
            proc_self_cgroup: "/proc/self/cgroup".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
        }
    }
}

/// Where a resolved set of cores came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreSource {
    /// The cgroup v2 file that was read.
    Cgroup(PathBuf),
    /// The affinity mask, and why the cgroup was not used.
    Affinity { cgroup_unusable: String },
}

impl fmt::Display for CoreSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroup(path) => write!(f, "cgroup {}", path.display()),
            Self::Affinity { cgroup_unusable } => {
                write!(f, "sched_getaffinity (cgroup unusable: {cgroup_unusable})")
            }
        }
    }
}

/// The cores this process may run on, and where that was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedCores {
    pub cores: BTreeSet<u32>,
    pub source: CoreSource,
}

/// The cgroup v2 path in `/proc/self/cgroup` text: the `0::/path` line.
pub fn v2_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim)
}

/// The cgroup's `cpuset.cpus.effective`: `Ok((file, cores))`, or why it cannot be used.
pub fn from_cgroup(paths: &CgroupPaths) -> Result<(PathBuf, BTreeSet<u32>), String> {
    let text = std::fs::read_to_string(&paths.proc_self_cgroup)
        .map_err(|e| format!("reading {}: {e}", paths.proc_self_cgroup.display()))?;
    let relative = v2_path(&text).ok_or_else(|| {
        format!(
            "{} has no cgroup v2 (0::) line",
            paths.proc_self_cgroup.display()
        )
    })?;
    let file = paths
        .cgroup_root
        .join(relative.trim_start_matches('/'))
        .join("cpuset.cpus.effective");
    let cores = read_cpulist(&file)?;
    Ok((file, cores))
}

fn read_cpulist(file: &Path) -> Result<BTreeSet<u32>, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    cpulist::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// The process's affinity mask.
pub fn from_affinity() -> Result<BTreeSet<u32>, String> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| format!("sched_getaffinity: {e}"))?;
    let cores: BTreeSet<u32> = (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .filter_map(|cpu| u32::try_from(cpu).ok())
        .collect();
    if cores.is_empty() {
        return Err("sched_getaffinity returned no core".into());
    }
    Ok(cores)
}

/// The cgroup's cores, else the affinity mask (saying why the cgroup was not used).
pub fn resolve(paths: &CgroupPaths) -> Result<AllowedCores, String> {
    match from_cgroup(paths) {
        Ok((file, cores)) => Ok(AllowedCores {
            cores,
            source: CoreSource::Cgroup(file),
        }),
        Err(cgroup_unusable) => Ok(AllowedCores {
            cores: from_affinity().map_err(|e| format!("{cgroup_unusable}; and {e}"))?,
            source: CoreSource::Affinity { cgroup_unusable },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/proc/self/cgroup` and cgroup mount under a temporary directory.
    fn fixture(proc_text: &str, cgroup: Option<(&str, &str)>) -> (tempfile::TempDir, CgroupPaths) {
        let dir = tempfile::tempdir().unwrap();
        let proc_self_cgroup = dir.path().join("cgroup");
        std::fs::write(&proc_self_cgroup, proc_text).unwrap();
        let cgroup_root = dir.path().join("sys-fs-cgroup");
        if let Some((relative, cpus)) = cgroup {
            let at = cgroup_root.join(relative);
            std::fs::create_dir_all(&at).unwrap();
            std::fs::write(at.join("cpuset.cpus.effective"), cpus).unwrap();
        }
        let paths = CgroupPaths {
            proc_self_cgroup,
            cgroup_root,
        };
        (dir, paths)
    }

    const KUBEPODS: &str = "kubepods.slice/kubepods-pod1234.slice/cri-containerd-abc.scope";

    #[test]
    fn finds_the_v2_line_among_v1_lines() {
        let text = "12:cpuset:/kubepods/x\n1:name=systemd:/y\n0::/kubepods.slice/z.scope\n";
        assert_eq!(v2_path(text), Some("/kubepods.slice/z.scope"));
        assert_eq!(v2_path("12:cpuset:/a\n"), None);
        assert_eq!(v2_path("0::/\n"), Some("/"));
    }

    #[test]
    fn reads_the_containers_cpuset() {
        let (_dir, paths) = fixture(&format!("0::/{KUBEPODS}\n"), Some((KUBEPODS, "2-5\n")));
        let allowed = resolve(&paths).unwrap();
        assert_eq!(allowed.cores, [2, 3, 4, 5].into());
        let want = paths
            .cgroup_root
            .join(KUBEPODS)
            .join("cpuset.cpus.effective");
        assert_eq!(allowed.source, CoreSource::Cgroup(want));
    }

    #[test]
    fn a_cgroup_namespace_root_reads_the_mount_itself() {
        // In a container with its own cgroup namespace the path is "/".
        let (_dir, paths) = fixture("0::/\n", Some(("", "1,3\n")));
        let allowed = resolve(&paths).unwrap();
        assert_eq!(allowed.cores, [1, 3].into());
        assert_eq!(
            allowed.source,
            CoreSource::Cgroup(paths.cgroup_root.join("cpuset.cpus.effective"))
        );
    }

    #[test]
    fn falls_back_to_affinity_and_says_why() {
        let cases = [
            // cgroup v1 only: no 0:: line.
            ("4:cpuset:/docker/abc\n", None, "no cgroup v2"),
            // v2 without the cpuset controller: no file.
            ("0::/a.scope\n", None, "reading"),
            // A file that is not a cpulist.
            ("0::/a.scope\n", Some(("a.scope", "\n")), "is empty"),
        ];
        for (proc_text, cgroup, why) in cases {
            let (_dir, paths) = fixture(proc_text, cgroup);
            let allowed = resolve(&paths).unwrap();
            match &allowed.source {
                CoreSource::Affinity { cgroup_unusable } => {
                    assert!(
                        cgroup_unusable.contains(why),
                        "{proc_text:?}: {cgroup_unusable}"
                    )
                }
                other => panic!("{proc_text:?}: expected the affinity fallback, got {other:?}"),
            }
            assert_eq!(allowed.cores, from_affinity().unwrap());
            assert!(allowed.source.to_string().starts_with("sched_getaffinity"));
        }
    }

    #[test]
    fn this_machine_resolves_to_cores_it_may_run_on() {
        let allowed = resolve(&CgroupPaths::default()).unwrap();
        assert!(!allowed.cores.is_empty(), "{allowed:?}");
        // Whatever the source, every core must be one the kernel lets this process use.
        let affinity = from_affinity().unwrap();
        assert!(
            !allowed.cores.is_disjoint(&affinity),
            "resolved {allowed:?}, but this process may only run on {affinity:?}"
        );
    }
}
