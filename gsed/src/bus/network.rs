//! `org.gentoo.Gse1.Network` over [`NetworkService`].

use std::sync::Arc;

use gse_dbus::{DBusError, network::InterfaceRow};
use zbus::{Connection, interface, message::Header, object_server::InterfaceRef};

use crate::network::{Interfaces, NetworkService};

pub struct NetworkObject {
    svc: Arc<NetworkService>,
}

impl NetworkObject {
    pub fn new(svc: Arc<NetworkService>) -> Self {
        NetworkObject { svc }
    }
}

/// The wired interfaces gsed manages (or only reports, with manage = false).
#[interface(name = "org.gentoo.Gse1.Network")]
impl NetworkObject {
    /// Each interface: name, state, carrier, method, addresses, gateway, DNS, lease expiry (epoch seconds), detail.
    #[zbus(property)]
    fn interfaces(&self) -> Vec<InterfaceRow> {
        self.svc.snapshot().into_iter().map(InterfaceRow::from).collect()
    }

    /// Renew every DHCP lease now.
    async fn renew(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::Network).await?;
        self.svc.renew();
        Ok(())
    }
}

/// `PropertiesChanged` for one change of any interface.
pub(super) async fn emit(iface: InterfaceRef<NetworkObject>, _: Interfaces, _: Interfaces) -> zbus::Result<()> {
    iface.get().await.interfaces_changed(iface.signal_emitter()).await
}
