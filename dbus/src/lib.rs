//! The D-Bus contract of GSE, shared by `gsed`, `gsectl`, the early-boot hook and
//! desktop tools: the bus name and object path, one `#[proxy]` trait per interface,
//! the wire types that cross the bus, and the single error enum.
//!
//! The introspection XML in `interfaces/` and the bus policy `org.gentoo.Gse1.conf`
//! live beside this crate; a test keeps the XML equal to what `gsed` exports.

#[macro_use]
mod wire_enum;
mod address;
pub mod boot;
pub mod config;
mod error;
pub mod health;
pub mod network;
pub mod servers;

pub use address::BusAddress;
pub use error::DBusError;

/// Well-known name that `gsed` owns.
pub const BUS_NAME: &str = "org.gentoo.Gse1";
/// The one object `gsed` serves; every interface lives on it.
pub const OBJECT_PATH: &str = "/org/gentoo/Gse1";

/// Interface names, one per capability (DESIGN §2).
pub mod interface {
    pub const HEALTH: &str = "org.gentoo.Gse1.Health";
    pub const CONFIG: &str = "org.gentoo.Gse1.Config";
    pub const NETWORK: &str = "org.gentoo.Gse1.Network";
    pub const SERVERS: &str = "org.gentoo.Gse1.Servers";
    pub const UPDATE: &str = "org.gentoo.Gse1.Update";
    pub const BOOT: &str = "org.gentoo.Gse1.Boot";
}

/// The system-bus policy, as installed to `/usr/share/dbus-1/system.d/`.
pub const POLICY: &str = include_str!("../org.gentoo.Gse1.conf");

/// Introspection XML of every interface `gsed` exports, by interface name.
pub const INTERFACE_XML: &[(&str, &str)] = &[
    (interface::HEALTH, include_str!("../interfaces/org.gentoo.Gse1.Health.xml")),
    (interface::CONFIG, include_str!("../interfaces/org.gentoo.Gse1.Config.xml")),
    (interface::NETWORK, include_str!("../interfaces/org.gentoo.Gse1.Network.xml")),
    (interface::SERVERS, include_str!("../interfaces/org.gentoo.Gse1.Servers.xml")),
    (interface::UPDATE, include_str!("../interfaces/org.gentoo.Gse1.Update.xml")),
];

/// Introspection XML of the interfaces `gsed --early` serves on its socket.
pub const EARLY_INTERFACE_XML: &[(&str, &str)] =
    &[(interface::BOOT, include_str!("../interfaces/org.gentoo.Gse1.Boot.xml"))];
