//! A room taking a new image, simulated: every client picks its server with the
//! real [`Selector`] (servers advertise their active transfers as load) and
//! fetches what the real chunk index says it lacks ([`Index::unique`] minus the
//! chunks of the version it holds), over links of fixed bandwidth shared fairly
//! (a fluid model, 100 ms steps). Used by `gse-bench room` and a test of its
//! properties. Test and bench code: it lives here, not in the daemon.

use std::collections::HashSet;

use gsed::{
    image::{Chunk, Index},
    servers::select::{Policy, Selector, View},
};

pub struct Room {
    pub clients: usize,
    pub servers: usize,
    /// Bytes a second of each server's link and of each client's.
    pub server_bps: f64,
    pub client_bps: f64,
    /// The image as published (bytes fetched in full).
    pub image_bytes: u64,
    /// Share of the chunks that changed from the version the clients hold.
    pub changed: f64,
    /// Clients start their check uniformly within this many seconds.
    pub spread_s: f64,
}

impl Default for Room {
    fn default() -> Self {
        Room {
            clients: 300,
            servers: 3,
            server_bps: 125e6,
            client_bps: 125e6,
            image_bytes: 2 << 30,
            changed: 0.02,
            spread_s: 60.0,
        }
    }
}

pub struct Outcome {
    /// Seconds until the last client has every chunk.
    pub last_done_s: f64,
    /// Bytes each server sent.
    pub sent: Vec<u64>,
    /// Bytes one client fetched.
    pub per_client: u64,
    /// Total bytes over total server bandwidth.
    pub ideal_s: f64,
    /// Every client fetching the whole image from one server.
    pub one_server_full_s: f64,
}

/// Two versions' indexes: `old`, and `new` with `changed` of its chunks replaced.
pub fn versions(image_bytes: u64, changed: f64, seed: u64) -> (Index, Index) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut chunks = Vec::new();
    let mut total = 0u64;
    let id = |rng: &mut fastrand::Rng| (0..32).map(|_| format!("{:02x}", rng.u8(..))).collect::<String>();
    while total < image_bytes {
        // Packed sizes around half a chunk's (compressed by half).
        let avg = gsed::image::index::AVG_CHUNK / 2;
        let packed = rng.u32(avg / 4..avg * 7 / 4);
        chunks.push(Chunk { id: id(&mut rng), size: packed * 2, packed, packed_sha256: None });
        total += u64::from(packed);
    }
    let size = chunks.iter().map(|c| u64::from(c.size)).sum();
    let old = Index { format: gsed::image::index::FORMAT, version: "1".into(), size, chunks: chunks.clone() };
    for c in chunks.iter_mut() {
        if rng.f64() < changed {
            c.id = id(&mut rng);
        }
    }
    let size = chunks.iter().map(|c| u64::from(c.size)).sum();
    (old, Index { format: gsed::image::index::FORMAT, version: "2".into(), size, chunks })
}

pub fn run(room: &Room) -> Outcome {
    let (old, new) = versions(room.image_bytes, room.changed, 7);
    let have: HashSet<&str> = old.chunks.iter().map(|c| c.id.as_str()).collect();
    let per_client: u64 =
        new.unique().iter().filter(|c| !have.contains(c.id.as_str())).map(|c| u64::from(c.packed)).sum();

    let names: Vec<String> = (0..room.servers).map(|i| format!("s{i}")).collect();
    let policy = Policy { fail_after: 2, margin: 0.3, jitter_ms: 2_000 };
    let mut rng = fastrand::Rng::with_seed(11);
    let start: Vec<f64> = (0..room.clients).map(|_| rng.f64() * room.spread_s).collect();
    let mut selectors: Vec<Selector> = (0..room.clients).map(|c| Selector::new(0x5eed ^ c as u64)).collect();
    let mut left: Vec<f64> = vec![per_client as f64; room.clients];
    let mut server_of: Vec<Option<usize>> = vec![None; room.clients];
    let mut sent = vec![0f64; room.servers];
    let (dt, mut t) = (0.1, 0.0);
    let mut last_done = 0.0;
    while left.iter().any(|l| *l > 0.0) {
        // Each server advertises its active transfers (100 at load 1.0).
        let active: Vec<usize> = (0..room.servers)
            .map(|s| (0..room.clients).filter(|c| server_of[*c] == Some(s) && left[*c] > 0.0).count())
            .collect();
        for c in 0..room.clients {
            if t < start[c] || left[c] <= 0.0 || server_of[c].is_some() {
                continue;
            }
            let views: Vec<View> = (0..room.servers)
                .map(|s| View {
                    name: names[s].clone(),
                    latency_ms: 1.0 + rng.f64(),
                    load: active[s] as f64 / 100.0,
                    failures: 0,
                })
                .collect();
            selectors[c].update(&views, &policy, (t * 1000.0) as u64);
            server_of[c] = selectors[c].current.as_ref().and_then(|n| names.iter().position(|x| x == n));
        }
        let active: Vec<usize> = (0..room.servers)
            .map(|s| (0..room.clients).filter(|c| server_of[*c] == Some(s) && left[*c] > 0.0).count())
            .collect();
        for c in 0..room.clients {
            let Some(s) = server_of[c].filter(|_| left[c] > 0.0) else { continue };
            let rate = (room.server_bps / active[s] as f64).min(room.client_bps);
            let got = (rate * dt).min(left[c]);
            left[c] -= got;
            sent[s] += got;
            if left[c] <= 0.0 {
                last_done = t + dt;
            }
        }
        t += dt;
    }
    let total = per_client as f64 * room.clients as f64;
    Outcome {
        last_done_s: last_done,
        sent: sent.iter().map(|b| *b as u64).collect(),
        per_client,
        ideal_s: total / (room.server_bps * room.servers as f64),
        one_server_full_s: new.packed_total() as f64 * room.clients as f64 / room.server_bps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_takes_a_small_change_near_the_ideal_and_spreads_it_over_the_servers() {
        let room = Room { clients: 60, image_bytes: 256 << 20, ..Room::default() };
        let o = run(&room);
        let (old, new) = versions(room.image_bytes, room.changed, 7);
        assert!(o.per_client * 20 < new.packed_total(), "a 2% change costs about 2%: {}", o.per_client);
        assert!(old.packed_total() > 0);
        // The transfers finish within the start spread plus twice the ideal.
        assert!(o.last_done_s < room.spread_s + 2.0 * o.ideal_s + 1.0, "{} s (ideal {} s)", o.last_done_s, o.ideal_s);
        let mean = o.sent.iter().sum::<u64>() as f64 / o.sent.len() as f64;
        for (i, s) in o.sent.iter().enumerate() {
            assert!((*s as f64 - mean).abs() < 0.5 * mean, "server {i} sent {s}, the mean is {mean}");
        }
    }
}
