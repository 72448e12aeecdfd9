//! `org.gentoo.Gse1.Config` over [`ConfigService`].

use std::sync::Arc;

use gse_dbus::{
    DBusError, OBJECT_PATH,
    config::{ConfigDump, ConfigValue},
};
use tokio::sync::watch;
use tracing::warn;
use zbus::{Connection, interface, message::Header, object_server::SignalEmitter};

use crate::confd::{ConfigService, ConfigState, Outcome};

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
            Outcome::Rejected(errors) => {
                Err(DBusError::InvalidConfig(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
            }
            Outcome::Applied(_) | Outcome::Unchanged => Ok(()),
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

/// Emits `PropertiesChanged` and `Changed` as the configuration state moves.
pub(super) async fn forward_changes(conn: Connection, mut rx: watch::Receiver<Arc<ConfigState>>) -> zbus::Result<()> {
    let iface = conn.object_server().interface::<_, ConfigObject>(OBJECT_PATH).await?;
    let mut last = rx.borrow_and_update().clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            let obj = iface.get().await;
            let em = iface.signal_emitter();
            let mut sent = Ok(());
            if now.generation != last.generation {
                sent = sent.and(obj.generation_changed(em).await);
                let files = now.changed.iter().map(|p| p.display().to_string()).collect();
                sent = sent.and(ConfigObject::changed(em, files).await);
            }
            if now.errors != last.errors {
                sent = sent.and(obj.errors_changed(em).await);
            }
            if let Err(e) = sent {
                warn!(error = %e, "could not emit a config signal");
            }
            last = now;
        }
    });
    Ok(())
}
