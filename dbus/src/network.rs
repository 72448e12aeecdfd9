//! `org.gentoo.Gse1.Network`: the wired interfaces gsed manages or reports.

use zbus::proxy;

use crate::DBusError;

/// One interface: name, state, carrier, method, addresses (CIDR), gateway, DNS
/// servers, lease expiry (seconds since the epoch, 0 for none), detail.
pub type InterfaceRow = (String, String, bool, String, Vec<String>, String, Vec<String>, u64, String);

#[proxy(interface = "org.gentoo.Gse1.Network", default_service = "org.gentoo.Gse1", default_path = "/org/gentoo/Gse1")]
pub trait Network {
    #[zbus(property)]
    fn interfaces(&self) -> Result<Vec<InterfaceRow>, DBusError>;

    /// Renew every DHCP lease now.
    fn renew(&self) -> Result<(), DBusError>;
}
