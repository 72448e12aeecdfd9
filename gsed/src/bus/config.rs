//! `org.gentoo.Gse1.Config` over [`ConfigService`].

use std::sync::Arc;

use gse_dbus::{
    DBusError,
    config::{ConfigDump, ConfigValue},
};
use zbus::{
    Connection, interface,
    message::Header,
    object_server::{InterfaceRef, SignalEmitter},
};

use crate::config::live::{ConfigService, ConfigState, Reload};

pub struct ConfigObject {
    svc: Arc<ConfigService>,
}

impl ConfigObject {
    pub fn new(svc: Arc<ConfigService>) -> Self {
        ConfigObject { svc }
    }
}

fn json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The configuration in force (config.d, layered and validated).
#[interface(name = "org.gentoo.Gse1.Config")]
impl ConfigObject {
    /// +1 on every applied change of config.d.
    #[zbus(property)]
    fn generation(&self) -> u64 {
        self.svc.current().generation
    }

    /// Errors of the files as they are now (file:line:column: message); empty when valid.
    #[zbus(property)]
    fn errors(&self) -> Vec<String> {
        self.svc.current().errors.iter().map(ToString::to_string).collect()
    }

    /// The merged value at a dotted key (boot.health.max_attempts), as JSON.
    /// Files that are not world-readable keep their content from unprivileged callers.
    async fn get(
        &self,
        key: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DBusError> {
        super::bounded("the key", &key, super::limits::KEY)?;
        let state = self.svc.current();
        let loaded = visible(&state, conn, &header).await?;
        let value = loaded.get(&key).ok_or_else(|| DBusError::InvalidArgs(format!("no configuration key '{key}'")))?;
        Ok(json(&value).to_string())
    }

    /// The whole configuration in force as JSON, each value with the file and line that set it.
    /// Files that are not world-readable keep their content from unprivileged callers.
    async fn dump(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DBusError> {
        let state = self.svc.current();
        let loaded = visible(&state, conn, &header).await?;
        let values = loaded
            .flatten(None)
            .into_iter()
            .map(|(key, _, origin)| {
                let value = loaded.get(&key).map(|v| json(&v)).unwrap_or_default();
                ConfigValue { key, value, origin: origin.map(|o| o.to_string()) }
            })
            .collect();
        let dump = ConfigDump {
            generation: state.generation,
            errors: state.errors.iter().map(ToString::to_string).collect(),
            values,
        };
        serde_json::to_string(&dump).map_err(|e| DBusError::Failed(e.to_string()))
    }

    /// Read config.d again now.
    async fn reload(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::ReloadConfig).await?;
        let svc = self.svc.clone();
        let outcome = tokio::task::spawn_blocking(move || svc.reload())
            .await
            .map_err(|e| DBusError::Failed(format!("reload crashed: {e}")))?;
        match outcome {
            Reload::Rejected(errors) => {
                Err(DBusError::InvalidConfig(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
            }
            Reload::Applied(_) | Reload::Unchanged => Ok(()),
        }
    }

    /// The files whose change was just applied.
    #[zbus(signal)]
    async fn changed(emitter: &SignalEmitter<'_>, files: Vec<String>) -> zbus::Result<()>;
}

/// The configuration as this caller may see it.
async fn visible<'a>(
    state: &'a ConfigState,
    conn: &Connection,
    header: &Header<'_>,
) -> Result<std::borrow::Cow<'a, crate::config::Loaded>, DBusError> {
    Ok(if super::auth::is_privileged(conn, header).await? {
        std::borrow::Cow::Borrowed(&*state.loaded)
    } else {
        state.loaded.for_anyone()
    })
}

/// `PropertiesChanged` and `Changed` for one move of the configuration state.
pub(super) async fn emit(
    iface: InterfaceRef<ConfigObject>,
    last: Arc<ConfigState>,
    now: Arc<ConfigState>,
) -> zbus::Result<()> {
    let (obj, em) = (iface.get().await, iface.signal_emitter());
    if now.generation != last.generation {
        obj.generation_changed(em).await?;
        let files = now.changed.iter().map(|p| p.display().to_string()).collect();
        ConfigObject::changed(em, files).await?;
    }
    if now.errors != last.errors {
        obj.errors_changed(em).await?;
    }
    Ok(())
}
