//! The kernel's TCP port settings, read from /proc/sys/net/ipv4; the model
//! parses them.

use std::{fs, io};

use crate::model::diagnose::{PortSettings, SettingsError};

const PORT_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const TW_REUSE_FILE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";
const TW_REUSE_DELAY_FILE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse_delay";
const FIN_TIMEOUT_FILE: &str = "/proc/sys/net/ipv4/tcp_fin_timeout";

/// The running kernel's settings, from /proc/sys/net/ipv4 (of this
/// process's network namespace).
pub fn read_port_settings() -> Result<PortSettings, SettingsError> {
    let port_range = read_setting(PORT_RANGE_FILE)?;
    let tw_reuse = read_setting(TW_REUSE_FILE)?;
    let tw_reuse_delay = match fs::read_to_string(TW_REUSE_DELAY_FILE) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(SettingsError::Unreadable {
                path: TW_REUSE_DELAY_FILE,
                source,
            });
        }
    };
    let fin_timeout = read_setting(FIN_TIMEOUT_FILE)?;
    PortSettings::parse(
        &port_range,
        &tw_reuse,
        tw_reuse_delay.as_deref(),
        &fin_timeout,
    )
}

fn read_setting(path: &'static str) -> Result<String, SettingsError> {
    fs::read_to_string(path).map_err(|source| SettingsError::Unreadable { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_file_is_named() {
        let error = read_setting("/proc/sys/net/ipv4/no_such_setting").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read /proc/sys/net/ipv4/no_such_setting:"),
            "{error}"
        );
    }

    #[test]
    fn reads_this_hosts_settings() {
        // /proc/sys is readable without root.
        let host = read_port_settings().expect("readable sysctls");
        assert!(host.ephemeral_ports() > 0);
    }
}
