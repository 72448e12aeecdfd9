//! A deterministic room-scale simulation of server selection: many clients
//! running the real [`Selector`] against simulated servers, on a simulated clock.
//! One server dies and later returns; another becomes overloaded. Used by a test
//! (the properties) and by `gse-bench sim` (the table). Test and bench code: it
//! lives here, not in the daemon.

use gsed::servers::select::{Policy, Selector, View};

pub struct Scenario {
    pub clients: usize,
    pub servers: usize,
    /// Clients a server carries at load 1.0.
    pub capacity: f64,
    pub rounds: u64,
    pub probe_interval_ms: u64,
    pub policy: Policy,
    /// (round, server) at which a server stops answering, and when it returns.
    pub dies: (u64, usize),
    pub returns: (u64, usize),
    /// (round, server, extra load) from which a server reports extra load.
    pub overload: (u64, usize, f64),
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            clients: 1000,
            servers: 4,
            capacity: 400.0,
            rounds: 100,
            probe_interval_ms: 30_000,
            policy: Policy { fail_after: 2, margin: 0.3, jitter_ms: 600_000 },
            dies: (20, 1),
            returns: (45, 1),
            overload: (70, 2, 0.6),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Round {
    pub round: u64,
    /// Clients per server after the round.
    pub clients: Vec<usize>,
    pub up: Vec<bool>,
    /// Clients that switched in this round.
    pub switched: usize,
    /// Clients whose server is down.
    pub stranded: usize,
}

pub fn run(sc: &Scenario) -> Vec<Round> {
    let names: Vec<String> = (0..sc.servers).map(|i| format!("s{i}")).collect();
    let mut selectors: Vec<Selector> = (0..sc.clients).map(|c| Selector::new(0x9e37_79b9 ^ c as u64)).collect();
    let mut failures = vec![vec![0u32; sc.servers]; sc.clients];
    let mut noise = fastrand::Rng::with_seed(42);
    let mut load = vec![0.0f64; sc.servers];
    let mut out = Vec::new();
    for round in 0..sc.rounds {
        let up: Vec<bool> = (0..sc.servers)
            .map(|s| !(s == sc.dies.1 && round >= sc.dies.0 && !(s == sc.returns.1 && round >= sc.returns.0)))
            .collect();
        let extra: Vec<f64> = (0..sc.servers)
            .map(|s| if s == sc.overload.1 && round >= sc.overload.0 { sc.overload.2 } else { 0.0 })
            .collect();
        let now = round * sc.probe_interval_ms;
        let mut switched = 0;
        for (c, sel) in selectors.iter_mut().enumerate() {
            let views: Vec<View> = (0..sc.servers)
                .map(|s| {
                    failures[c][s] = if up[s] { 0 } else { failures[c][s] + 1 };
                    View {
                        name: names[s].clone(),
                        latency_ms: 10.0 + noise.f64() * 2.0 - 1.0,
                        load: load[s] + extra[s],
                        failures: failures[c][s],
                    }
                })
                .collect();
            if sel.update(&views, &sc.policy, now).is_some() {
                switched += 1;
            }
        }
        let mut clients = vec![0usize; sc.servers];
        for sel in &selectors {
            if let Some(i) = sel.current.as_ref().and_then(|n| names.iter().position(|x| x == n)) {
                clients[i] += 1;
            }
        }
        // What the servers advertise in status.json at the next probe.
        for s in 0..sc.servers {
            load[s] = clients[s] as f64 / sc.capacity;
        }
        let stranded = (0..sc.servers).filter(|s| !up[*s]).map(|s| clients[s]).sum();
        out.push(Round { round, clients, up, switched: if round == 0 { 0 } else { switched }, stranded });
    }
    out
}

/// The table `gse-bench sim` prints: one line per round.
pub fn table(sc: &Scenario, rounds: &[Round]) -> String {
    let mut s = String::from("round  ");
    for i in 0..sc.servers {
        s.push_str(&format!("  s{i} share"));
    }
    s.push_str("  switched  event\n");
    for r in rounds {
        s.push_str(&format!("{:>5}  ", r.round));
        for (i, c) in r.clients.iter().enumerate() {
            let mark = if r.up[i] { ' ' } else { '†' };
            s.push_str(&format!("   {:>6.1}%{mark}", 100.0 * *c as f64 / sc.clients as f64));
        }
        let event = match r.round {
            x if x == sc.dies.0 => format!("s{} dies", sc.dies.1),
            x if x == sc.returns.0 => format!("s{} returns", sc.returns.1),
            x if x == sc.overload.0 => format!("s{} overloaded (+{:.0}% load)", sc.overload.1, sc.overload.2 * 100.0),
            _ => String::new(),
        };
        s.push_str(&format!("  {:>7.1}%  {event}\n", 100.0 * r.switched as f64 / sc.clients as f64));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_fails_over_balances_and_does_not_stampede() {
        let sc = Scenario::default();
        let rounds = run(&sc);
        let fair = |r: &Round| sc.clients as f64 / r.up.iter().filter(|u| **u).count() as f64;
        // Failover: nobody is left on the dead server after two probe intervals.
        for r in &rounds[(sc.dies.0 + 1) as usize..sc.returns.0 as usize] {
            assert_eq!(r.stranded, 0, "round {}: {} clients on a dead server", r.round, r.stranded);
        }
        // Steady states, just before each event and at the end.
        for at in [sc.dies.0 - 1, sc.returns.0 - 1, sc.overload.0 - 1, sc.rounds - 1] {
            let r = &rounds[at as usize];
            let worst = r.clients.iter().map(|c| *c as f64).fold(0.0, f64::max);
            assert!(
                worst <= 1.2 * fair(r),
                "round {at}: {:?} exceeds 1.2x the fair share {:.0}\n{}",
                r.clients,
                fair(r),
                table(&sc, &rounds)
            );
        }
        // The returning server is refilled gradually.
        for r in &rounds[sc.returns.0 as usize..sc.overload.0 as usize] {
            assert!(
                (r.switched as f64) < 0.1 * sc.clients as f64,
                "round {}: {} switched\n{}",
                r.round,
                r.switched,
                table(&sc, &rounds)
            );
        }
        let returned = &rounds[(sc.overload.0 - 1) as usize];
        assert!(returned.clients[sc.returns.1] > 150, "the returned server got its share back: {:?}", returned.clients);
        let overloaded = rounds.last().expect("rounds").clients[sc.overload.1];
        assert!(overloaded < 220, "clients moved off the overloaded server: {overloaded}");
    }
}
