//! Who may change state (DESIGN §2): root, members of group `gse`, and whoever
//! polkit authorizes for the action — desktop users, the way systemd-sysupdate
//! and rpm-ostree let them in. gsed checks every state-changing call itself, with
//! the caller's uid and groups as the bus daemon knows them, so a bus that ignores
//! policy files lets no one in. Read-only calls need nothing.

use std::collections::HashMap;

use gse_dbus::DBusError;
use tracing::{debug, info};
use zbus::{Connection, message::Header, proxy};

/// The polkit actions (`dbus/org.gentoo.gse1.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// MarkGood, MarkBad, RecordShutdown, BootComplete.
    Health,
    /// Config.Reload.
    ReloadConfig,
    /// Servers.Switch, Unpin, Sync.
    Servers,
    /// Update.Check.
    CheckUpdate,
    /// Update.Approve, Decline.
    DecideUpdate,
    /// Network.Renew.
    Network,
}

impl Action {
    pub fn id(self) -> &'static str {
        match self {
            Action::Health => "org.gentoo.gse1.health",
            Action::ReloadConfig => "org.gentoo.gse1.reload-config",
            Action::Servers => "org.gentoo.gse1.servers",
            Action::CheckUpdate => "org.gentoo.gse1.check-update",
            Action::DecideUpdate => "org.gentoo.gse1.approve-update",
            Action::Network => "org.gentoo.gse1.network",
        }
    }
}

#[proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
trait Authority {
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, zbus::Variant<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// Whether the caller is root or in group `gse`: what the bus says of it.
pub async fn is_privileged(conn: &Connection, header: &Header<'_>) -> Result<bool, DBusError> {
    // Peer-to-peer (the early socket): no sender; the socket admits root only.
    let Some(sender) = header.sender() else { return Ok(true) };
    // No property cache: one call per check, not a GetAll first.
    let dbus = zbus::fdo::DBusProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|e| DBusError::Failed(e.to_string()))?;
    let creds = dbus
        .get_connection_credentials(sender.clone().into())
        .await
        .map_err(|e| DBusError::AccessDenied(format!("cannot tell who the caller is: {e}")))?;
    if creds.unix_user_id() == Some(0) {
        return Ok(true);
    }
    let gse = nix::unistd::Group::from_name("gse").ok().flatten().map(|g| g.gid.as_raw());
    Ok(gse.is_some_and(|g| creds.unix_group_ids().is_some_and(|ids| ids.contains(&g))))
}

/// Lets the call through, or says why not.
pub async fn authorize(conn: &Connection, header: &Header<'_>, action: Action) -> Result<(), DBusError> {
    if is_privileged(conn, header).await? {
        return Ok(());
    }
    let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
    let denied = |why: &str| {
        info!(caller = %sender, action = action.id(), why, "call refused");
        DBusError::AccessDenied(format!(
            "only root, members of group 'gse' and users polkit allows for {} may do this ({why})",
            action.id()
        ))
    };
    let authority = match AuthorityProxy::new(conn).await {
        Ok(a) => a,
        Err(_) => return Err(denied("polkit is not available")),
    };
    let subject = ("system-bus-name", HashMap::from([("name", zbus::Variant::from(sender.as_str()))]));
    // Flag 1: the user may be asked (an authentication agent in a desktop session).
    match authority.check_authorization(&subject, action.id(), HashMap::new(), 1, "").await {
        Ok((true, _, _)) => {
            debug!(caller = %sender, action = action.id(), "authorized by polkit");
            Ok(())
        }
        Ok((false, true, _)) => Err(denied("polkit wants an authentication that did not happen")),
        Ok((false, false, _)) => Err(denied("polkit says no")),
        Err(zbus::Error::FDO(e))
            if matches!(*e, zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)) =>
        {
            Err(denied("polkit is not running"))
        }
        Err(e) => Err(denied(&format!("polkit did not answer: {e}"))),
    }
}
