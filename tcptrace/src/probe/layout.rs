//! Where the probe finds a socket's protocol, family, ports and addresses on
//! the running kernel, read from its BTF. Offsets are never compiled in:
//! `struct sock` changes between kernel versions and configurations.

use tcptrace_common::ProbeConfig;
use thiserror::Error;

use crate::probe::btf::{Btf, BtfError, MemberLocation};

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error("cannot locate a socket field in kernel BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("kernel field {field} is {actual} bytes, the probe reads {expected}")]
    UnexpectedSize {
        field: &'static str,
        expected: u32,
        actual: u32,
    },
}

/// A field the probe reads: its path in `struct sock` and the width it reads.
struct Field {
    path: &'static [&'static str],
    size: u32,
}

const PROTOCOL: Field = Field {
    path: &["sk_protocol"],
    size: 2,
};
const FAMILY: Field = Field {
    path: &["__sk_common", "skc_family"],
    size: 2,
};
const LOCAL_PORT: Field = Field {
    path: &["__sk_common", "skc_num"],
    size: 2,
};
const REMOTE_PORT: Field = Field {
    path: &["__sk_common", "skc_dport"],
    size: 2,
};
const LOCAL_V4: Field = Field {
    path: &["__sk_common", "skc_rcv_saddr"],
    size: 4,
};
const REMOTE_V4: Field = Field {
    path: &["__sk_common", "skc_daddr"],
    size: 4,
};
const LOCAL_V6: Field = Field {
    path: &["__sk_common", "skc_v6_rcv_saddr"],
    size: 16,
};
const REMOTE_V6: Field = Field {
    path: &["__sk_common", "skc_v6_daddr"],
    size: 16,
};
const STATE: Field = Field {
    path: &["__sk_common", "skc_state"],
    size: 1,
};
const SOCKET: Field = Field {
    path: &["sk_socket"],
    size: 8,
};
const NET: Field = Field {
    path: &["__sk_common", "skc_net", "net"],
    size: 8,
};

fn locate(btf: &Btf, field: &Field) -> Result<u32, LayoutError> {
    let MemberLocation { offset, size } = btf.member("sock", field.path)?;
    if size != field.size {
        return Err(LayoutError::UnexpectedSize {
            field: field.path.last().copied().unwrap_or("?"),
            expected: field.size,
            actual: size,
        });
    }
    Ok(offset)
}

/// A `struct socket` is the first member of `struct socket_alloc`, whose
/// `vfs_inode` is the socket file's inode.
fn socket_inode_number_offset(btf: &Btf) -> Result<u32, LayoutError> {
    let location = btf.member("socket_alloc", &["vfs_inode", "i_ino"])?;
    if location.size != 8 {
        return Err(LayoutError::UnexpectedSize {
            field: "i_ino",
            expected: 8,
            actual: location.size,
        });
    }
    Ok(location.offset)
}

/// The probe configuration with every offset filled from `btf` and no
/// filters. The network-namespace offsets are optional (a kernel without
/// CONFIG_NET_NS has none); everything else is required.
pub fn probe_config(btf: &Btf) -> Result<ProbeConfig, LayoutError> {
    let mut config = ProbeConfig {
        protocol_offset: locate(btf, &PROTOCOL)?,
        family_offset: locate(btf, &FAMILY)?,
        local_port_offset: locate(btf, &LOCAL_PORT)?,
        remote_port_offset: locate(btf, &REMOTE_PORT)?,
        local_v4_offset: locate(btf, &LOCAL_V4)?,
        remote_v4_offset: locate(btf, &REMOTE_V4)?,
        local_v6_offset: locate(btf, &LOCAL_V6)?,
        remote_v6_offset: locate(btf, &REMOTE_V6)?,
        socket_offset: locate(btf, &SOCKET)?,
        socket_inode_number_offset: socket_inode_number_offset(btf)?,
        state_offset: locate(btf, &STATE)?,
        ..ProbeConfig::UNSET
    };
    // Only stacks need the saved user registers; without them a stack copy
    // has nothing to start unwinding from, and the loader takes none.
    if let (Ok(ip), Ok(bp), Ok(sp)) = (
        btf.member("pt_regs", &["ip"]),
        btf.member("pt_regs", &["bp"]),
        btf.member("pt_regs", &["sp"]),
    ) {
        config.regs_ip_offset = ip.offset;
        config.regs_bp_offset = bp.offset;
        config.regs_sp_offset = sp.offset;
    }
    // Optional: without it every lookup of the probe's socket storage that
    // creates none (the destroy hook's, for one) calls the storage helper,
    // though most sockets have no storage.
    if let Ok(storage) = btf.member("sock", &["sk_bpf_storage"])
        && storage.size == 8
    {
        config.sk_storage_offset = storage.offset;
    }
    // Optional: without it a stack copy reads its whole length, past the
    // top of a thread's stack.
    if let Ok(fsbase) = btf.member("task_struct", &["thread", "fsbase"])
        && fsbase.size == 8
    {
        config.task_fsbase_offset = fsbase.offset;
    }
    // Optional: without it a socket closed but held shows port 0.
    if let Ok(sport) = btf.member("inet_sock", &["inet_sport"])
        && sport.size == 2
    {
        config.inet_sport_offset = sport.offset;
    }
    set_first_io_offsets(btf, &mut config);
    let netns_inode = btf
        .member("net", &["ns", "inum"])
        .ok()
        .filter(|location| location.size == 4);
    if let (Ok(net_offset), Some(inode)) = (locate(btf, &NET), netns_inode) {
        config.net_offset = net_offset;
        config.netns_inode_offset = inode.offset;
        config.has_netns = 1;
    }
    Ok(config)
}

/// Optional, all or none: without them no first read or first write is
/// copied (connect, accept and EOF still are).
fn set_first_io_offsets(btf: &Btf, config: &mut ProbeConfig) {
    let field = |name: &str, size: u32| {
        btf.member("tcp_sock", &[name])
            .ok()
            .filter(|location| location.size == size)
            .map(|location| location.offset)
    };
    if let (
        Some(bytes_received),
        Some(rcv_nxt),
        Some(copied_seq),
        Some(bytes_acked),
        Some(snd_una),
        Some(write_seq),
    ) = (
        field("bytes_received", 8),
        field("rcv_nxt", 4),
        field("copied_seq", 4),
        field("bytes_acked", 8),
        field("snd_una", 4),
        field("write_seq", 4),
    ) {
        config.tcp_bytes_received_offset = bytes_received;
        config.tcp_rcv_nxt_offset = rcv_nxt;
        config.tcp_copied_seq_offset = copied_seq;
        config.tcp_bytes_acked_offset = bytes_acked;
        config.tcp_snd_una_offset = snd_una;
        config.tcp_write_seq_offset = write_seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::btf::tests::BtfBuilder;

    /// A `struct sock` shaped like 6.x's, with made-up offsets.
    fn fake_kernel(protocol_size: u32, with_netns: bool) -> Btf {
        let mut b = BtfBuilder::new();
        let u16_t = b.int("unsigned short", 2);
        let u32_t = b.int("unsigned int", 4);
        let u8_t = b.int("unsigned char", 1);
        let in6 = b.array(u8_t, u32_t, 16);
        let addrs = b.composite(
            false,
            "",
            8,
            &[("skc_daddr", u32_t, 0, 0), ("skc_rcv_saddr", u32_t, 32, 0)],
        );
        let addrpair = b.composite(
            true,
            "",
            8,
            &[("skc_addrpair", u32_t, 0, 0), ("", addrs, 0, 0)],
        );
        let u8_state = b.int("unsigned char", 1);
        let volatile_state = b.volatile(u8_state);
        let ports = b.composite(
            false,
            "",
            4,
            &[("skc_dport", u16_t, 0, 0), ("skc_num", u16_t, 16, 0)],
        );
        let net_ptr = b.pointer(0);
        let possible_net = b.composite(false, "", 8, &[("net", net_ptr, 0, 0)]);
        let common = b.composite(
            false,
            "sock_common",
            96,
            &[
                ("", addrpair, 0, 0),
                ("", ports, 96, 0),
                ("skc_family", u16_t, 128, 0),
                ("skc_state", volatile_state, 144, 0),
                ("skc_net", possible_net, 384, 0),
                ("skc_v6_daddr", in6, 448, 0),
                ("skc_v6_rcv_saddr", in6, 576, 0),
            ],
        );
        let ns_common = b.composite(
            false,
            "ns_common",
            24,
            &[("stashed", net_ptr, 0, 0), ("inum", u32_t, 128, 0)],
        );
        if with_netns {
            b.composite(
                false,
                "net",
                64,
                &[("passive", u32_t, 0, 0), ("ns", ns_common, 64, 0)],
            );
        }
        let u64_t = b.int("unsigned long", 8);
        let inode = b.composite(
            false,
            "inode",
            64,
            &[("i_mode", u16_t, 0, 0), ("i_ino", u64_t, 320, 0)],
        );
        let socket = b.composite(false, "socket", 48, &[("state", u32_t, 0, 0)]);
        b.composite(
            false,
            "socket_alloc",
            112,
            &[("socket", socket, 0, 0), ("vfs_inode", inode, 384, 0)],
        );
        let socket_ptr = b.pointer(socket);
        b.composite(
            false,
            "pt_regs",
            168,
            &[
                ("bp", u64_t, 256, 0),
                ("ip", u64_t, 1024, 0),
                ("sp", u64_t, 1216, 0),
            ],
        );
        let protocol = if protocol_size == 2 { u16_t } else { u8_t };
        b.composite(
            false,
            "sock",
            200,
            &[
                ("__sk_common", common, 0, 0),
                ("sk_protocol", protocol, 1024, 0),
                ("sk_socket", socket_ptr, 1088, 0),
            ],
        );
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn reads_every_offset_from_btf() {
        let config = probe_config(&fake_kernel(2, true)).unwrap();
        assert_eq!(config.remote_v4_offset, 0);
        assert_eq!(config.local_v4_offset, 4);
        assert_eq!(config.remote_port_offset, 12);
        assert_eq!(config.local_port_offset, 14);
        assert_eq!(config.family_offset, 16);
        assert_eq!(config.net_offset, 48);
        assert_eq!(config.remote_v6_offset, 56);
        assert_eq!(config.local_v6_offset, 72);
        assert_eq!(config.protocol_offset, 128);
        assert_eq!(config.netns_inode_offset, 24);
        assert_eq!(config.socket_offset, 136);
        assert_eq!(config.socket_inode_number_offset, 48 + 40);
        assert_eq!(
            config.state_offset, 18,
            "found through the volatile qualifier"
        );
        assert_eq!(
            (
                config.regs_bp_offset,
                config.regs_ip_offset,
                config.regs_sp_offset
            ),
            (32, 128, 152)
        );
        assert_eq!(config.has_netns, 1);
    }

    #[test]
    fn a_kernel_without_namespaces_leaves_them_out() {
        let config = probe_config(&fake_kernel(2, false)).unwrap();
        assert_eq!(config.has_netns, 0);
        assert_eq!(config.net_offset, 0);
        assert_eq!(config.local_v6_offset, 72);
    }

    #[test]
    fn refuses_a_field_of_another_width() {
        match probe_config(&fake_kernel(1, true)) {
            Err(LayoutError::UnexpectedSize {
                field,
                expected: 2,
                actual: 1,
            }) => assert_eq!(field, "sk_protocol"),
            other => panic!("expected UnexpectedSize, got {other:?}"),
        }
    }

    /// The running kernel's own BTF (readable without root) must give the
    /// layout that 6.x kernels have had for years.
    #[test]
    fn reads_the_running_kernels_btf() {
        let btf = match Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(error) => {
                eprintln!("skipped: no kernel BTF here ({error})");
                return;
            }
        };
        let config = probe_config(&btf).unwrap();
        assert_eq!(config.remote_v4_offset, 0, "skc_daddr opens sock_common");
        assert_eq!(config.state_offset, 18);
        assert_ne!(config.regs_ip_offset, config.regs_bp_offset);
        assert_eq!(config.local_v4_offset, 4);
        assert_eq!(config.local_port_offset, config.remote_port_offset + 2);
        assert_eq!(config.has_netns, 1);
        assert!(config.protocol_offset > config.local_v6_offset);
        if cfg!(target_arch = "x86_64") {
            // `thread` closes task_struct, which is kilobytes long.
            assert!(config.task_fsbase_offset > 1024, "thread.fsbase found");
        }
        assert!(config.sk_storage_offset > config.protocol_offset);
        // tcp_sock opens with the struct sock it extends.
        assert!(config.tcp_write_seq_offset > config.sk_storage_offset);
        assert!(config.tcp_bytes_received_offset > config.sk_storage_offset);
    }
}
