//! `gsed --early`: no bus daemon in the initramfs, so the Boot interface is
//! served peer-to-peer to each client that connects to the early socket.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    sync::Arc,
};

use crate::{boot::BootService, bus::BootObject, config, config::live::ConfigService, paths::Paths};
use anyhow::{Context, Result};
use gse_dbus::OBJECT_PATH;
use tokio::{net::UnixListener, sync::Notify};
use tracing::{info, warn};
use zbus::{Guid, connection};

/// How long a client of the early socket may take for the D-Bus handshake.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);

/// A GUID for one peer-to-peer connection. zbus's `Guid::generate` takes a v4
/// UUID from getrandom(2), which blocks until the kernel's random pool is
/// ready (seconds into a boot without a hardware RNG); a GUID only has to be
/// unique, so fastrand's non-blocking seed will do.
fn guid() -> Guid<'static> {
    Guid::try_from(format!("{:032x}", fastrand::u128(..))).expect("32 hex digits are a GUID")
}

pub(super) async fn run(
    paths: &Paths,
    boot_id: &str,
    signal: impl std::future::Future<Output = &'static str>,
) -> Result<()> {
    let config = ConfigService::with_trees(config::early_layers(paths));
    let boot = BootService::new(paths, config, boot_id);
    // Going online (DHCP, the server pick, the config.d sync) needs nothing
    // from the hook: it starts now and runs while the hook's client starts
    // and connects; Prepare waits for it, as for a step it started itself.
    tokio::spawn({
        let boot = boot.clone();
        async move { boot.go_online().await }
    });
    let finished = Arc::new(Notify::new());

    let sock = paths.early_socket();
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("cannot listen on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    let ours = std::fs::metadata(&sock).map(|m| (m.dev(), m.ino())).ok();
    info!(socket = %sock.display(), "gsed --early ready");

    let mut conns = Vec::new();
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    tokio::pin!(signal);
    let why = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting a connection")?;
                // Only root drives early boot, whatever the socket's mode says.
                match stream.peer_cred().map(|c| c.uid()) {
                    Ok(0) => {}
                    Ok(uid) => { warn!(uid, "refused a connection to the early socket: only root may drive early boot"); continue; }
                    Err(e) => { warn!(error = %e, "refused a connection whose peer is unknown"); continue; }
                }
                // Each handshake runs on its own, bounded: a client that stays
                // silent cannot hold up the hook's.
                let (obj, tx) = (BootObject::new(boot.clone(), finished.clone()), ready_tx.clone());
                let stream = stream.into_std()?;
                tokio::spawn(async move {
                    let built = connection::Builder::unix_stream(stream)
                        .server(guid())
                        .p2p()
                        .serve_at(OBJECT_PATH, obj)
                        .build();
                    match tokio::time::timeout(HANDSHAKE, built).await {
                        Ok(Ok(c)) => { let _ = tx.send(c); }
                        Ok(Err(e)) => warn!(error = %e, "a client could not connect"),
                        Err(_) => warn!("a client did not finish its handshake within {HANDSHAKE:?}; dropped"),
                    }
                });
            }
            Some(c) = ready.recv() => conns.push(c),
            _ = finished.notified() => break "the boot was handed over",
            s = &mut signal => break s,
        }
    };
    info!(why, "gsed --early stopping");
    // The reply to Finish() goes out before the connections close (each
    // closes once its last call is answered); the hook waits for this exit
    // before it releases the disks, so no fixed pause, and a bound.
    let closed = futures_util::future::join_all(conns.into_iter().map(|c| c.graceful_shutdown()));
    if tokio::time::timeout(std::time::Duration::from_secs(1), closed).await.is_err() {
        warn!("a connection to the early socket did not close within 1 s");
    }
    // A successor may already listen on the same path; leave its socket alone.
    if std::fs::metadata(&sock).map(|m| (m.dev(), m.ino())).ok() == ours {
        let _ = std::fs::remove_file(&sock);
    }
    Ok(())
}
