use zbus::DBusError as DeriveDBusError;

/// Every error `gsed` returns over the bus, named `org.gentoo.Gse1.Error.<Variant>`.
///
/// Proxies in this crate return this type, so a caller can match on the variant
/// instead of parsing error names.
#[derive(Debug, DeriveDBusError)]
#[zbus(prefix = "org.gentoo.Gse1.Error")]
pub enum DBusError {
    /// A transport or protocol error, including errors from the bus daemon itself
    /// (for example `org.freedesktop.DBus.Error.AccessDenied` from the policy).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// An argument was malformed or out of range.
    InvalidArgs(String),
    /// The request is valid but cannot be done in the daemon's current state.
    NotPossible(String),
    /// The configuration is invalid; the message names file, line and field.
    InvalidConfig(String),
    /// Something failed inside the daemon (I/O, a helper program); the message says what.
    Failed(String),
    /// The caller may not do this: not root, not in group `gse`, and polkit did not
    /// authorize the action.
    AccessDenied(String),
}

impl DBusError {
    /// The bus-level error inside, if this is one (`org.freedesktop.DBus.Error.*`).
    fn fdo(&self) -> Option<&zbus::fdo::Error> {
        match self {
            DBusError::ZBus(zbus::Error::FDO(e)) => Some(e),
            _ => None,
        }
    }

    /// True when the bus (or the peer) refused the call for lack of privilege.
    pub fn is_access_denied(&self) -> bool {
        matches!(self.fdo(), Some(zbus::fdo::Error::AccessDenied(_))) || matches!(self, DBusError::AccessDenied(_))
    }

    /// True when nobody owns the GSE name or the bus itself cannot be reached.
    pub fn is_unreachable(&self) -> bool {
        use zbus::fdo::Error as F;
        matches!(self.fdo(), Some(F::ServiceUnknown(_) | F::NameHasNoOwner(_) | F::NoReply(_) | F::Disconnected(_)))
            || matches!(self, DBusError::ZBus(zbus::Error::InputOutput(_)))
    }
}
