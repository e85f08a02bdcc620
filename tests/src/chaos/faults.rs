//! Random faults injected while the workload runs, each healed after a random while, and
//! the final "heal everything".
//!
//! The kinds come from a deck, not independent draws, so a run exercises every kind: the first
//! deck holds every kind once, those of the seed's third first ([`first_deck`]: kinds whose
//! position in the list is `seed % 3` modulo 3), the rest in a seeded shuffle; each later deck
//! is a seeded shuffle of every kind. A kind that cannot be injected right now (its node has a fault already, a partition
//! is in place) stays at the top of the deck until it can. So any run injects every kind once
//! in its first `kinds.len()` faults, and seeds 1, 2 and 3 (the CI quick mode) between them
//! inject all nine in their first three faults each. The schedule depends on the seed only:
//! a seed replays.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::history::History;
use super::Rng;

/// The kinds of fault a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `kill -9` of a sidecar, restarted after a pause.
    KillSidecar,
    /// SIGSTOP of a sidecar, SIGCONT later.
    PauseSidecar,
    /// `kill -9` of a nats-server, restarted later.
    KillNats,
    /// One or two nodes cut off from the others.
    Partition,
    /// The sidecar restarted under libfaketime with its clock up to ±2 minutes off.
    ClockSkew,
    /// The node's tmpfs (database and JetStream store) made full.
    DiskFull,
    /// `kill -9` of the wasm replica's node process, restarted (a new, empty memory replica
    /// that bootstraps from a snapshot or the stream) after a pause.
    KillWasm,
    /// The wasm replica's namespace cut off from every node: it keeps writing offline.
    PartitionWasm,
    /// The wasm replica's node process restarted under libfaketime, its clock up to ±2 minutes
    /// off: the replica's HLC stamps its writes from that clock (app-side skew).
    SkewWasm,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillSidecar,
        FaultKind::PauseSidecar,
        FaultKind::KillNats,
        FaultKind::Partition,
        FaultKind::ClockSkew,
        FaultKind::DiskFull,
        FaultKind::KillWasm,
        FaultKind::PartitionWasm,
        FaultKind::SkewWasm,
    ];

    /// Whether the kind targets the wasm replica.
    pub fn is_wasm(self) -> bool {
        matches!(
            self,
            FaultKind::KillWasm | FaultKind::PartitionWasm | FaultKind::SkewWasm
        )
    }

    /// The kind named `name` (see [`FaultKind::name`]).
    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Short name used in figures.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillSidecar => "kill9-sidecar",
            FaultKind::PauseSidecar => "pause-sidecar",
            FaultKind::KillNats => "kill9-nats",
            FaultKind::Partition => "partition",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::DiskFull => "disk-full",
            FaultKind::KillWasm => "kill9-wasm",
            FaultKind::PartitionWasm => "partition-wasm",
            FaultKind::SkewWasm => "clock-skew-wasm",
        }
    }
}

/// The first deck of a run with `seed`: every kind of `kinds` once, those at positions equal
/// to `seed` modulo 3 first (in list order), then the others in a seeded shuffle.
pub fn first_deck(seed: u64, kinds: &[FaultKind]) -> Vec<FaultKind> {
    let mine = |i: &usize| (*i as u64) % 3 == seed % 3;
    let (first, mut rest): (Vec<_>, Vec<_>) = (0..kinds.len()).partition(mine);
    shuffle(&mut rest, &mut Rng::new(seed ^ 0xDEC));
    first.into_iter().chain(rest).map(|i| kinds[i]).collect()
}

/// A Fisher-Yates shuffle drawing from `rng`.
fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// A fault in place, healed at `until`.
struct Active {
    kind: FaultKind,
    node: Option<usize>,
    until: Instant,
}

/// Injects and heals faults on a cluster, recording each in the history.
pub struct Injector {
    rng: Rng,
    kinds: Vec<FaultKind>,
    deck: VecDeque<FaultKind>,
    active: Vec<Active>,
    /// Faults injected so far, by kind.
    pub counts: BTreeMap<FaultKind, u64>,
    history: History,
}

impl Injector {
    /// A new injector drawing from `seed`, injecting faults of `kinds` (not empty).
    pub fn new(seed: u64, kinds: Vec<FaultKind>, history: History) -> Self {
        assert!(!kinds.is_empty(), "no fault kinds to inject");
        Injector {
            rng: Rng::new(seed ^ 0xFA17),
            deck: first_deck(seed, &kinds).into(),
            kinds,
            active: Vec::new(),
            counts: BTreeMap::new(),
            history,
        }
    }

    /// Heals what is due, then maybe injects one new fault.
    pub fn step(&mut self, cluster: &mut Cluster, now: Instant) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|a| a.until <= now);
        self.active = keep;
        for fault in due {
            self.heal(cluster, &fault);
        }
        if self.active.len() >= 2 || !self.rng.chance(40) {
            return;
        }
        if self.deck.is_empty() {
            // A new deck: a seeded shuffle of every kind.
            let mut deck = self.kinds.clone();
            shuffle(&mut deck, &mut self.rng);
            self.deck = deck.into();
        }
        let kind = self.deck[0];
        let n = cluster.nodes.len();
        let mut node = self.rng.below(n as u64) as usize;
        if kind.is_wasm() {
            // The wasm replica is the network's member `n`.
            if cluster.wasm.is_none() {
                self.deck.pop_front();
                return;
            }
            node = n;
        }
        // Not now: the kind stays on top of the deck.
        if matches!(kind, FaultKind::Partition | FaultKind::PartitionWasm) {
            if cluster.network.is_partitioned() {
                return;
            }
        } else if self.active.iter().any(|a| a.node == Some(node)) {
            return;
        }
        self.deck.pop_front();
        let hold = Duration::from_millis(
            500 + self.rng.below(match kind {
                FaultKind::KillSidecar | FaultKind::KillNats | FaultKind::KillWasm => 4_000,
                FaultKind::PauseSidecar => 8_000,
                _ => 15_000,
            }),
        );
        let what = match kind {
            FaultKind::KillSidecar => {
                cluster.nodes[node].kill_sidecar();
                format!("kill -9 sidecar {node}")
            }
            FaultKind::PauseSidecar => {
                cluster.nodes[node].pause_sidecar();
                format!("SIGSTOP sidecar {node}")
            }
            FaultKind::KillNats => {
                cluster.nodes[node].kill_nats();
                format!("kill -9 nats-server {node}")
            }
            FaultKind::Partition => {
                let mut side = vec![node];
                if n >= 4 && self.rng.chance(50) {
                    side.push((node + 1 + self.rng.below(n as u64 - 1) as usize) % n);
                }
                cluster.network.partition(&side);
                format!("partition {side:?} from the rest")
            }
            FaultKind::ClockSkew => {
                let skew = self.skew();
                let target = &mut cluster.nodes[node];
                target.kill_sidecar();
                target.skew_secs = Some(skew);
                target.start_sidecar();
                format!("clock skew {skew:+} s on sidecar {node}")
            }
            FaultKind::DiskFull => {
                cluster.nodes[node].fill_disk();
                format!("disk full under node {node}")
            }
            FaultKind::KillWasm => {
                let wasm = cluster.wasm.as_mut().expect("checked above");
                let who = wasm.label();
                let lost = wasm.kill();
                format!("kill -9 wasm replica ({who}): {lost} commits not yet acknowledged by JetStream")
            }
            FaultKind::PartitionWasm => {
                cluster.network.partition(&[n]);
                "partition the wasm replica from every node".to_string()
            }
            FaultKind::SkewWasm => {
                let skew = self.skew();
                let wasm = cluster.wasm.as_mut().expect("checked above");
                let who = wasm.label();
                let lost = wasm.kill();
                wasm.skew_secs = Some(skew);
                wasm.start();
                format!("clock skew {skew:+} s on the wasm replica (kill -9 {who}: {lost} commits not yet acknowledged by JetStream; restarted)")
            }
        };
        *self.counts.entry(kind).or_default() += 1;
        self.history.fault(what);
        self.active.push(Active {
            kind,
            node: (!matches!(kind, FaultKind::Partition | FaultKind::PartitionWasm))
                .then_some(node),
            until: now + hold,
        });
    }

    /// A clock offset of ±10–120 s.
    fn skew(&mut self) -> i64 {
        let magnitude = 10 + self.rng.below(111) as i64;
        if self.rng.chance(50) {
            magnitude
        } else {
            -magnitude
        }
    }

    fn heal(&mut self, cluster: &mut Cluster, fault: &Active) {
        let what = match (fault.kind, fault.node) {
            (FaultKind::Partition | FaultKind::PartitionWasm, _) => {
                cluster.network.heal();
                "heal partition".to_string()
            }
            (FaultKind::KillWasm | FaultKind::SkewWasm, _) => {
                let wasm = cluster
                    .wasm
                    .as_mut()
                    .expect("a wasm fault without a replica");
                wasm.kill();
                wasm.skew_secs = None;
                wasm.start();
                format!("heal {} (restarted)", fault.kind.name())
            }
            (kind, Some(i)) => {
                let node = &mut cluster.nodes[i];
                match kind {
                    FaultKind::KillSidecar => node.start_sidecar(),
                    FaultKind::PauseSidecar => node.resume_sidecar(),
                    FaultKind::KillNats => node.start_nats(),
                    FaultKind::ClockSkew => {
                        node.kill_sidecar();
                        node.skew_secs = None;
                        node.start_sidecar();
                    }
                    FaultKind::DiskFull => {
                        if node.free_disk() {
                            self.history.fault(format!(
                                "restart nats-server {i}: JetStream disabled itself"
                            ));
                        }
                    }
                    _ => unreachable!("handled above"),
                }
                format!("heal {} on node {i}", kind.name())
            }
            (kind, None) => unreachable!("{kind:?} always names a node"),
        };
        self.history.fault(what);
    }

    /// Heals every fault still in place.
    pub fn heal_all(&mut self, cluster: &mut Cluster) {
        for fault in std::mem::take(&mut self.active) {
            self.heal(cluster, &fault);
        }
        // Whatever else happened, every process runs again.
        for node in &mut cluster.nodes {
            if node.nats_exited().is_some() {
                node.kill_nats();
            }
            if !node.nats_started() {
                node.start_nats();
            }
            if node.sidecar_exited().is_some() {
                node.kill_sidecar();
            }
            if node.sidecar_pid().is_none() {
                node.start_sidecar();
            }
        }
        if let Some(wasm) = cluster.wasm.as_mut() {
            if wasm.exited().is_some() {
                wasm.kill();
            }
            if !wasm.running() {
                wasm.start();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_decks_of_seeds_1_2_3_begin_with_every_kind_between_them() {
        let mut covered: Vec<FaultKind> = [1, 2, 3]
            .into_iter()
            .flat_map(|seed| first_deck(seed, &FaultKind::ALL)[..3].to_vec())
            .collect();
        covered.sort();
        assert_eq!(covered, FaultKind::ALL.to_vec());
    }

    #[test]
    fn a_first_deck_holds_every_kind_once_and_depends_on_the_seed_only() {
        for seed in 0..10 {
            let deck = first_deck(seed, &FaultKind::ALL);
            let mut sorted = deck.clone();
            sorted.sort();
            assert_eq!(sorted, FaultKind::ALL.to_vec(), "seed {seed}");
            assert_eq!(deck, first_deck(seed, &FaultKind::ALL), "seed {seed}");
        }
        // Without the wasm replica the native kinds are dealt the same way.
        let native: Vec<_> = FaultKind::ALL
            .into_iter()
            .filter(|k| !k.is_wasm())
            .collect();
        let deck = first_deck(1, &native);
        assert_eq!(deck[..2], [FaultKind::PauseSidecar, FaultKind::ClockSkew]);
        assert_eq!(deck.len(), native.len());
        // Seeds of one residue deal the rest differently.
        let rests: std::collections::BTreeSet<_> = [1, 4, 7, 10, 13]
            .into_iter()
            .map(|seed| first_deck(seed, &FaultKind::ALL)[3..].to_vec())
            .collect();
        assert!(rests.len() > 1, "every seed deals the same rest: {rests:?}");
    }
}
