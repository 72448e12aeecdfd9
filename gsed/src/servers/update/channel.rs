//! What a client takes from a channel file: only one signed for its channel,
//! never older than what it took before, and, under a phased rollout, only
//! when its bucket is in.

use sha2::{Digest, Sha256};

use crate::{paths::Paths, servers::publish::Channel};

/// This machine's place (0-99) in the phased rollout of `version`: stable for a
/// machine and a version, spread over the room (from the machine key's digest).
pub fn bucket(paths: &Paths, version: &str) -> u32 {
    let who = std::fs::read(paths.flag_key())
        .or_else(|_| std::fs::read(paths.run_flag_key()))
        .or_else(|_| std::fs::read(paths.resolve("/etc/machine-id")))
        .unwrap_or_default();
    let d = Sha256::new().chain_update(b"gse rollout\0").chain_update(&who).chain_update(version).finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 100
}

/// A channel file is taken only for the channel it was signed for, and never
/// older than one taken before (a replayed or mixed-up file cannot bring an old
/// version back); what is taken is recorded.
pub(super) fn accept_channel(paths: &Paths, channel: &str, ch: &Channel) -> Result<(), String> {
    if ch.channel != channel {
        return Err(format!("channel {channel}: the file is signed for channel '{}': refused", ch.channel));
    }
    let mut acc = crate::servers::accepted::Accepted::load(paths);
    let have = acc.channels.get(channel).copied().unwrap_or(0);
    if ch.published < have {
        return Err(format!(
            "channel {channel}: published at {}, older than {have} already accepted: refused (a replayed file)",
            ch.published
        ));
    }
    if ch.published > have {
        acc.channels.insert(channel.to_owned(), ch.published);
        acc.save(paths).map_err(|e| format!("recording the accepted channel: {e}"))?;
    }
    Ok(())
}

/// The version of the running image: `/etc/gse-release`, else early boot's record.
pub fn local_version(paths: &Paths) -> String {
    let from_release = std::fs::read_to_string(paths.release_file())
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("VERSION=").map(|v| v.trim_matches('"').to_owned())));
    from_release
        .or_else(|| {
            let rec = crate::health::read_boot_record(&paths.boot_json())?;
            Some(rec.image_version).filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "unknown".into())
}
