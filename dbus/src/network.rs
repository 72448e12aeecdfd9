//! `org.gentoo.Gse1.Network`: the wired interfaces gsed manages or reports.

use zbus::proxy;

use crate::DBusError;

use serde::{Deserialize, Serialize};

wire_enum!(
    "interface state",
    /// Where one wired interface stands.
    #[derive(Default)]
    pub enum LinkState {
        /// Named in network.conf but not present.
        #[default]
        Absent = "absent",
        /// Administratively down (gsed brings managed links up).
        Down = "down",
        NoCarrier = "no-carrier",
        /// Asking for a DHCP lease.
        Configuring = "configuring",
        /// Holds a DHCP lease.
        Bound = "bound",
        /// Configured with static addresses.
        Static = "static",
        /// No DHCP server answered; retrying.
        NoLease = "no-lease",
        /// The lease ran out and was removed.
        Expired = "expired",
        /// Reported only (`manage = false`).
        Unmanaged = "unmanaged",
        Error = "error",
    }
);

impl LinkState {
    /// Whether the interface has its addresses (the network is up through it).
    pub fn is_up(self) -> bool {
        matches!(self, LinkState::Bound | LinkState::Static)
    }
}

wire_enum!(
    "address method",
    /// How an interface gets its addresses.
    #[derive(Default)]
    pub enum AddrMethod {
        Dhcp = "dhcp",
        Static = "static",
        /// Not managed by gsed.
        #[default]
        None = "none",
    }
);

/// One interface: name, state, carrier, method, addresses (CIDR), gateway, DNS
/// servers, lease expiry (seconds since the epoch, 0 for none), detail.
pub type InterfaceRow = (String, String, bool, String, Vec<String>, String, Vec<String>, u64, String);

/// One wired interface; crosses the bus as an [`InterfaceRow`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub state: LinkState,
    pub carrier: bool,
    pub method: AddrMethod,
    pub addresses: Vec<String>,
    pub gateway: String,
    pub dns: Vec<String>,
    /// Seconds since the epoch when the DHCP lease ends (0: none).
    pub lease_expiry: u64,
    pub detail: String,
}

impl From<Interface> for InterfaceRow {
    fn from(i: Interface) -> Self {
        let (state, method) = (i.state.as_str().into(), i.method.as_str().into());
        (i.name, state, i.carrier, method, i.addresses, i.gateway, i.dns, i.lease_expiry, i.detail)
    }
}

impl TryFrom<InterfaceRow> for Interface {
    type Error = String;
    fn try_from(r: InterfaceRow) -> Result<Self, String> {
        let (name, state, carrier, method, addresses, gateway, dns, lease_expiry, detail) = r;
        Ok(Interface {
            name,
            state: state.parse()?,
            carrier,
            method: method.parse()?,
            addresses,
            gateway,
            dns,
            lease_expiry,
            detail,
        })
    }
}

#[proxy(interface = "org.gentoo.Gse1.Network", default_service = "org.gentoo.Gse1", default_path = "/org/gentoo/Gse1")]
pub trait Network {
    #[zbus(property)]
    fn interfaces(&self) -> Result<Vec<InterfaceRow>, DBusError>;

    /// Renew every DHCP lease now.
    fn renew(&self) -> Result<(), DBusError>;
}
