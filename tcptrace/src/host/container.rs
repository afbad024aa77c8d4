//! Which container a process runs in, read from its cgroup path. Container
//! runtimes name a container's cgroup after its 64-hex id, so the path is
//! enough to tell a docker, containerd, cri-o or podman container from a host
//! process, and a Kubernetes pod's uid is in the path as well.

use std::{fs, os::unix::fs::MetadataExt};

use serde::Serialize;

/// Hex digits in a full container id (docker, containerd, cri-o, podman).
const CONTAINER_ID_LEN: usize = 64;

/// Hex digits in a pod uid: a UUID, or for static pods an md5 hash.
const POD_UID_HEX_DIGITS: usize = 32;

/// Hex digits `short_label` shows, as `docker ps` does.
const SHORT_ID_LEN: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// The cgroup path the answer was read from.
    pub cgroup: String,
    /// The full 64-hex id; `None` for host processes.
    pub container_id: Option<String>,
    /// "docker", "containerd", "cri-o", "podman", or "kubepods" when the
    /// Kubernetes cgroup layout does not say which runtime made it.
    pub runtime: Option<&'static str>,
    /// With dashes, as `kubectl get pod -o jsonpath={.metadata.uid}` shows it.
    pub pod_uid: Option<String>,
}

impl ContainerInfo {
    /// The id as `docker ps` shortens it; "" for host processes.
    pub fn short_label(&self) -> String {
        self.container_id
            .as_deref()
            .map(|id| id.chars().take(SHORT_ID_LEN).collect())
            .unwrap_or_default()
    }
}

/// Reads `/proc/<pid>/cgroup`; `None` when the process is gone.
pub fn container_of(pid: u32) -> Option<ContainerInfo> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_cgroup_file(&text)
}

/// The inode of the process's network namespace: sockets with the same
/// inode share addresses and ports.
pub fn net_namespace_of(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|meta| meta.ino())
}

/// One line of /proc/<pid>/cgroup: "hierarchy-id:controllers:path".
struct CgroupLine<'a> {
    hierarchy: &'a str,
    controllers: &'a str,
    path: &'a str,
}

fn parse_line(line: &str) -> Option<CgroupLine<'_>> {
    // The path may itself contain ':', so split only twice.
    let mut fields = line.splitn(3, ':');
    let hierarchy = fields.next()?;
    let controllers = fields.next()?;
    let path = fields.next()?;
    if !path.starts_with('/') {
        return None;
    }
    Some(CgroupLine {
        hierarchy,
        controllers,
        path,
    })
}

fn is_unified(line: &CgroupLine) -> bool {
    line.hierarchy == "0" && line.controllers.is_empty()
}

fn is_systemd(line: &CgroupLine) -> bool {
    line.controllers.split(',').any(|c| c == "name=systemd")
}

/// Parses /proc/<pid>/cgroup. `None` only when no line is readable; a host
/// process gives `Some` with no container id.
pub fn parse_cgroup_file(text: &str) -> Option<ContainerInfo> {
    let lines: Vec<CgroupLine> = text.lines().filter_map(parse_line).collect();
    // The v2 line is the process's real place on a unified or hybrid host;
    // on v1 every controller has its own tree, and `name=systemd` is the one
    // all runtimes place the container in. A line that names a container
    // wins over one that does not: on a hybrid host with the cgroupfs driver
    // only the v1 lines show the container.
    let preference = |line: &CgroupLine| {
        if is_unified(line) {
            0
        } else if is_systemd(line) {
            1
        } else {
            2
        }
    };
    let mut ordered: Vec<&CgroupLine> = lines.iter().collect();
    ordered.sort_by_key(|line| preference(line));
    let chosen = ordered
        .iter()
        .map(|line| info_from_path(line.path))
        .find(|info| info.container_id.is_some());
    chosen.or_else(|| ordered.first().map(|line| info_from_path(line.path)))
}

fn info_from_path(path: &str) -> ContainerInfo {
    let mut container = None;
    let mut pod_uid = None;
    let mut in_kubepods = false;
    let mut parent = "";
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component == "kubepods" || component.starts_with("kubepods.") {
            in_kubepods = true;
        }
        if let Some(uid) = pod_uid_of(component) {
            pod_uid = Some(uid);
        }
        // The deepest id wins: with docker in docker the inner container is
        // the one the process runs in.
        if let Some(found) = container_of_component(component, parent, in_kubepods) {
            container = Some(found);
        }
        parent = component;
    }
    ContainerInfo {
        cgroup: path.to_owned(),
        container_id: container.map(|(id, _)| id.to_owned()),
        runtime: container.and_then(|(_, runtime)| runtime),
        pod_uid,
    }
}

/// The systemd scope prefixes runtimes use, as "<prefix><id>.scope".
const SCOPE_PREFIXES: [(&str, &str); 4] = [
    ("docker-", "docker"),
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("libpod-", "podman"),
];

/// A container id and its runtime when `component` is a whole container
/// cgroup name: "<prefix><id>.scope", or the bare id (cgroupfs driver).
fn container_of_component<'a>(
    component: &'a str,
    parent: &str,
    in_kubepods: bool,
) -> Option<(&'a str, Option<&'static str>)> {
    if is_container_id(component) {
        // The cgroupfs layout names no runtime but its parent directory.
        let runtime = if parent == "docker" {
            Some("docker")
        } else if in_kubepods {
            Some("kubepods")
        } else {
            None
        };
        return Some((component, runtime));
    }
    let stem = component.strip_suffix(".scope")?;
    SCOPE_PREFIXES.iter().find_map(|(prefix, runtime)| {
        let id = stem.strip_prefix(prefix)?;
        is_container_id(id).then_some((id, Some(*runtime)))
    })
}

fn is_container_id(text: &str) -> bool {
    text.len() == CONTAINER_ID_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The pod uid in "pod<uid>" (cgroupfs driver) or
/// "kubepods-<qos>-pod<uid>.slice" (systemd driver, where '-' means nesting
/// and so the uid's dashes are written as '_').
fn pod_uid_of(component: &str) -> Option<String> {
    let raw = match component.strip_suffix(".slice") {
        Some(slice) => slice
            .strip_prefix("kubepods-")?
            .rsplit_once("pod")
            .map(|(_, uid)| uid)?,
        None => component.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

fn is_pod_uid(text: &str) -> bool {
    text.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        && text.bytes().filter(u8::is_ascii_hexdigit).count() == POD_UID_HEX_DIGITS
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    const POD: &str = "1234abcd-5678-90ef-1234-567890abcdef";

    fn v2(path: &str) -> ContainerInfo {
        parse_cgroup_file(&format!("0::{path}\n")).expect("a v2 line")
    }

    #[test]
    fn docker_with_systemd_driver() {
        let info = v2(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, Some("docker"));
        assert_eq!(info.pod_uid, None);
        assert_eq!(info.short_label(), "3f4e1c2b9a8d");
        assert_eq!(info.cgroup, format!("/system.slice/docker-{ID}.scope"));
    }

    #[test]
    fn docker_with_cgroupfs_driver() {
        let info = v2(&format!("/docker/{ID}"));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, Some("docker"));
    }

    #[test]
    fn containerd_in_kubernetes_with_systemd_driver() {
        let pod = POD.replace('-', "_");
        let info = v2(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, Some("containerd"));
        assert_eq!(info.pod_uid.as_deref(), Some(POD));
    }

    #[test]
    fn guaranteed_pod_slice_has_no_qos_class() {
        let pod = POD.replace('-', "_");
        let info = v2(&format!(
            "/kubepods.slice/kubepods-pod{pod}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(info.pod_uid.as_deref(), Some(POD));
    }

    #[test]
    fn kubernetes_with_cgroupfs_driver() {
        let info = v2(&format!("/kubepods/besteffort/pod{POD}/{ID}"));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, Some("kubepods"));
        assert_eq!(info.pod_uid.as_deref(), Some(POD));
    }

    #[test]
    fn static_pod_uid_is_a_hash_without_dashes() {
        let hash = "0123456789abcdef0123456789abcdef";
        let info = v2(&format!("/kubepods/burstable/pod{hash}/{ID}"));
        assert_eq!(info.pod_uid.as_deref(), Some(hash));
    }

    #[test]
    fn cri_o() {
        let info = v2(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{ID}.scope",
            POD.replace('-', "_")
        ));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, Some("cri-o"));
        assert_eq!(info.pod_uid.as_deref(), Some(POD));
    }

    #[test]
    fn podman() {
        let info = v2(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
        ));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, Some("podman"));
    }

    #[test]
    fn host_processes_have_no_container() {
        for path in ["/user.slice/user-0.slice/session-1.scope", "/"] {
            let info = v2(path);
            assert_eq!(info.container_id, None, "{path}");
            assert_eq!(info.runtime, None, "{path}");
            assert_eq!(info.pod_uid, None, "{path}");
            assert_eq!(info.short_label(), "", "{path}");
            assert_eq!(info.cgroup, path);
        }
    }

    #[test]
    fn hex_inside_other_words_is_not_an_id() {
        for path in [
            format!("/system.slice/foo-{ID}.scope"),
            format!("/system.slice/docker-{ID}.service"),
            format!("/system.slice/docker-{ID}0.scope"),
            format!("/x{ID}"),
            format!("/{}", ID.to_uppercase()),
            format!("/system.slice/libpod-conmon-{ID}.scope"),
        ] {
            assert_eq!(v2(&path).container_id, None, "{path}");
        }
    }

    #[test]
    fn unknown_parent_gives_an_id_without_runtime() {
        let info = v2(&format!("/default/{ID}"));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, None);
    }

    #[test]
    fn nested_containers_name_the_innermost() {
        let inner = "a".repeat(64);
        let info = v2(&format!("/docker/{ID}/docker/{inner}"));
        assert_eq!(info.container_id.as_deref(), Some(inner.as_str()));
    }

    #[test]
    fn v1_takes_the_systemd_line() {
        let text = format!("12:cpuset:/\n11:memory:/other\n1:name=systemd:/docker/{ID}\n");
        let info = parse_cgroup_file(&text).expect("lines");
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.cgroup, format!("/docker/{ID}"));
    }

    #[test]
    fn v1_without_systemd_takes_the_first_controller_with_an_id() {
        let other = "b".repeat(64);
        let text = format!("12:cpuset:/\n11:memory:/docker/{ID}\n10:pids:/docker/{other}\n");
        let info = parse_cgroup_file(&text).expect("lines");
        assert_eq!(info.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn v2_line_is_preferred() {
        let other = "b".repeat(64);
        let text = format!("1:name=systemd:/docker/{other}\n0::/system.slice/docker-{ID}.scope\n");
        let info = parse_cgroup_file(&text).expect("lines");
        assert_eq!(info.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn hybrid_host_falls_back_to_v1_when_v2_names_no_container() {
        let text = format!("1:name=systemd:/docker/{ID}\n0::/\n");
        let info = parse_cgroup_file(&text).expect("lines");
        assert_eq!(info.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn host_on_v1_reports_the_preferred_line() {
        let text = "12:cpuset:/\n1:name=systemd:/user.slice/user-0.slice/session-1.scope\n";
        let info = parse_cgroup_file(text).expect("lines");
        assert_eq!(info.container_id, None);
        assert_eq!(info.cgroup, "/user.slice/user-0.slice/session-1.scope");
    }

    #[test]
    fn unreadable_text_gives_none() {
        assert_eq!(parse_cgroup_file(""), None);
        assert_eq!(parse_cgroup_file("garbage\n"), None);
    }

    #[test]
    fn short_label_never_panics_on_odd_ids() {
        let info = ContainerInfo {
            cgroup: "/".into(),
            container_id: Some("é".repeat(20)),
            runtime: None,
            pod_uid: None,
        };
        assert_eq!(info.short_label().chars().count(), 12);
    }

    #[test]
    fn this_process_is_readable() {
        let pid = std::process::id();
        assert!(container_of(pid).is_some());
        assert!(net_namespace_of(pid).is_some());
        // Beyond pid_max (4194304): no such process.
        assert_eq!(container_of(u32::MAX), None);
        assert_eq!(net_namespace_of(u32::MAX), None);
    }
}
