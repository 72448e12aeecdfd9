//! `org.gentoo.Gse1.Network` over [`NetworkService`].

use std::sync::Arc;

use gse_dbus::{DBusError, OBJECT_PATH};
use tracing::warn;
use zbus::{Connection, interface, message::Header};

use crate::network::NetworkService;

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
    #[allow(clippy::type_complexity)]
    fn interfaces(&self) -> Vec<(String, String, bool, String, Vec<String>, String, Vec<String>, u64, String)> {
        self.svc
            .snapshot()
            .into_iter()
            .map(|s| (s.name, s.state, s.carrier, s.method, s.addresses, s.gateway, s.dns, s.lease_expiry, s.detail))
            .collect()
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

pub(super) async fn forward_changes(conn: Connection, svc: Arc<NetworkService>) -> zbus::Result<()> {
    let iface = conn.object_server().interface::<_, NetworkObject>(OBJECT_PATH).await?;
    let mut rx = svc.subscribe();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            rx.borrow_and_update();
            if let Err(e) = iface.get().await.interfaces_changed(iface.signal_emitter()).await {
                warn!(error = %e, "could not emit a network signal");
            }
        }
    });
    Ok(())
}
