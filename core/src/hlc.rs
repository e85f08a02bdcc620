//! Hybrid logical clock: node ids, timestamps and the clock that issues them.
//!
//! Timestamps are `uhlc` timestamps: a 64-bit NTP time (32.32 fixed point seconds since the
//! Unix epoch) plus the 128-bit id of the node that issued it. The node id breaks every tie,
//! so two distinct writes never carry equal timestamps.
//!
//! The clock never reads the OS clock. Local writes are stamped from the wall-clock time the
//! capture trigger recorded when the *application* wrote ([`Clock::stamp_local_write`]);
//! remote timestamps advance the clock ([`Clock::observe`]) unless they are further ahead of
//! the host's `now` than the configured bound, in which case they are refused with
//! [`ClockError::TooFarAhead`].
//!
//! `uhlc::HLC` itself reads time through a `fn() -> NTP64` and cannot stamp a write with the
//! time it was made, so this module keeps uhlc's types and its update rule (including its
//! 4-bit logical counter in the low bits of the time) but takes every time as an argument.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use uhlc::NTP64;

/// Number of low bits of an NTP64 time that uhlc reserves for the logical counter.
const COUNTER_BITS: u32 = uhlc::CSIZE as u32;
/// Mask that clears the logical counter bits of a physical time.
const PHYSICAL_MASK: u64 = !((1u64 << COUNTER_BITS) - 1);

/// Identity of a replica. Non-zero 128-bit value; fixed for the life of a database file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(uhlc::ID);

impl NodeId {
    /// Encoded length in bytes.
    pub const LEN: usize = 16;

    /// Builds a node id from a non-zero integer.
    pub fn from_u128(value: u128) -> Option<Self> {
        if value == 0 {
            return None;
        }
        uhlc::ID::try_from(value.to_le_bytes()).ok().map(NodeId)
    }

    /// The id as an integer.
    pub fn as_u128(&self) -> u128 {
        u128::from_le_bytes(self.0.to_le_bytes())
    }

    /// Fixed-width bytes whose lexicographic order equals `Ord` (uhlc orders ids by their
    /// little-endian byte array).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        self.0.to_le_bytes()
    }

    /// Inverse of [`NodeId::to_bytes`]; `None` for the all-zero array.
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Option<Self> {
        uhlc::ID::try_from(bytes).ok().map(NodeId)
    }

    /// The underlying uhlc id.
    pub fn as_uhlc(&self) -> uhlc::ID {
        self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl fmt::Display for NodeId {
    /// Lower-case hex of the integer value, without leading zeros (as `uhlc` prints ids).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.as_u128())
    }
}

impl std::str::FromStr for NodeId {
    type Err = ClockError;

    /// Parses the hex form printed by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = u128::from_str_radix(s, 16).map_err(|_| ClockError::BadNodeId(s.into()))?;
        NodeId::from_u128(value).ok_or_else(|| ClockError::BadNodeId(s.into()))
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; Self::LEN]>::deserialize(d)?;
        NodeId::from_bytes(bytes).ok_or_else(|| serde::de::Error::custom("node id is zero"))
    }
}

/// A hybrid logical clock timestamp: `(time, node)`, ordered by time then node.
///
/// `Eq`, `Ord` and `Hash` are derived together from the same two fields, so they agree.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    time: NTP64,
    node: NodeId,
}

impl Hlc {
    /// Encoded length in bytes: 8 bytes of big-endian time then 16 bytes of node id.
    pub const LEN: usize = 8 + NodeId::LEN;

    /// Builds a timestamp from its parts.
    pub fn new(time: NTP64, node: NodeId) -> Self {
        Hlc { time, node }
    }

    /// The time part.
    pub fn time(&self) -> NTP64 {
        self.time
    }

    /// The node that issued this timestamp.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Fixed-width encoding whose byte order equals `Ord`, so SQLite's BLOB comparison
    /// (`memcmp`) orders encoded timestamps exactly as Rust does.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.time.as_u64().to_be_bytes());
        out[8..].copy_from_slice(&self.node.to_bytes());
        out
    }

    /// Inverse of [`Hlc::to_bytes`]; errors on a wrong length or a zero node id.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ClockError> {
        if bytes.len() != Self::LEN {
            return Err(ClockError::BadEncoding(bytes.len()));
        }
        let mut time = [0u8; 8];
        time.copy_from_slice(&bytes[..8]);
        let mut node = [0u8; NodeId::LEN];
        node.copy_from_slice(&bytes[8..]);
        let node = NodeId::from_bytes(node).ok_or(ClockError::BadEncoding(bytes.len()))?;
        Ok(Hlc::new(NTP64(u64::from_be_bytes(time)), node))
    }

    /// The equivalent `uhlc` timestamp.
    pub fn to_uhlc(&self) -> uhlc::Timestamp {
        uhlc::Timestamp::new(self.time, self.node.as_uhlc())
    }
}

impl Serialize for Hlc {
    /// As `(time, node)`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.time.as_u64(), self.node).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hlc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (time, node) = <(u64, NodeId)>::deserialize(d)?;
        Ok(Hlc::new(NTP64(time), node))
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}/{})", self.time.as_u64(), self.node)
    }
}

/// Converts a duration since the Unix epoch into NTP64 time.
pub fn ntp64_from_unix(since_epoch: Duration) -> NTP64 {
    NTP64::from(since_epoch)
}

/// Converts Unix-epoch milliseconds (as the capture triggers record them) into NTP64 time.
pub fn ntp64_from_unix_millis(millis: i64) -> NTP64 {
    ntp64_from_unix(Duration::from_millis(millis.max(0) as u64))
}

/// Errors of the clock and of timestamp decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// A remote timestamp is further ahead of local time than the configured bound.
    #[error(
        "timestamp from node {node} is {ahead_ms} ms ahead of local time (limit {limit_ms} ms); \
         refusing to adopt it (check the clocks of both hosts)"
    )]
    TooFarAhead {
        /// Node that issued the timestamp.
        node: NodeId,
        /// How far ahead it is, in milliseconds.
        ahead_ms: u64,
        /// The configured bound, in milliseconds.
        limit_ms: u64,
    },
    /// An encoded timestamp has the wrong length or a zero node id.
    #[error("malformed timestamp encoding ({0} bytes, expected 24 with a non-zero node id)")]
    BadEncoding(usize),
    /// A node id string is not non-zero hex.
    #[error("invalid node id {0:?}: expected a non-zero hexadecimal number of at most 32 digits")]
    BadNodeId(String),
}

/// The node's hybrid logical clock. Holds the last issued or observed time; never reads the
/// OS clock.
#[derive(Debug, Clone)]
pub struct Clock {
    node: NodeId,
    last: NTP64,
    max_ahead: NTP64,
}

impl Clock {
    /// Default bound on how far ahead of local time a remote timestamp may be.
    pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(300);

    /// A clock for `node` whose last time is `last` (persisted across restarts), refusing
    /// remote timestamps more than `max_ahead` ahead of `now`.
    pub fn new(node: NodeId, last: NTP64, max_ahead: Duration) -> Self {
        Clock {
            node,
            last,
            max_ahead: NTP64::from(max_ahead),
        }
    }

    /// This clock's node id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The last time issued or observed.
    pub fn last(&self) -> NTP64 {
        self.last
    }

    /// Stamps a local write made at wall-clock time `wall`. The result is greater than every
    /// timestamp this clock issued or observed before, and equals `wall` (counter bits
    /// cleared) when the wall clock is ahead of them.
    pub fn stamp_local_write(&mut self, wall: NTP64) -> Hlc {
        let physical = NTP64(wall.as_u64() & PHYSICAL_MASK);
        if physical > self.last {
            self.last = physical;
        } else {
            self.last = NTP64(self.last.as_u64() + 1);
        }
        Hlc::new(self.last, self.node)
    }

    /// Observes a remote timestamp at local time `now`. Refuses it (clock unchanged) when it
    /// is more than the bound ahead of `now`; otherwise later local stamps exceed it.
    pub fn observe(&mut self, remote: Hlc, now: NTP64) -> Result<(), ClockError> {
        self.check_not_too_far_ahead(remote, now)?;
        if remote.time > self.last {
            self.last = remote.time;
        }
        Ok(())
    }

    /// Checks the bound of [`Clock::observe`] without changing the clock.
    pub fn check_not_too_far_ahead(&self, remote: Hlc, now: NTP64) -> Result<(), ClockError> {
        let now = NTP64(now.as_u64() & PHYSICAL_MASK);
        if remote.time > now && remote.time - now > self.max_ahead {
            return Err(ClockError::TooFarAhead {
                node: remote.node,
                ahead_ms: (remote.time - now).to_duration().as_millis() as u64,
                limit_ms: self.max_ahead.to_duration().as_millis() as u64,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(n: u128) -> NodeId {
        NodeId::from_u128(n).unwrap()
    }

    #[test]
    fn node_id_round_trips_through_hex() {
        let id = node(0xdead_beef);
        assert_eq!(id.to_string(), "deadbeef");
        assert_eq!("deadbeef".parse::<NodeId>().unwrap(), id);
        assert!("0".parse::<NodeId>().is_err());
        assert!("xyz".parse::<NodeId>().is_err());
    }

    #[test]
    fn remote_far_ahead_is_refused_and_not_adopted() {
        let mut clock = Clock::new(node(1), NTP64(0), Duration::from_secs(1));
        let now = ntp64_from_unix(Duration::from_secs(1000));
        let remote = Hlc::new(ntp64_from_unix(Duration::from_secs(1002)), node(2));
        let err = clock.observe(remote, now).unwrap_err();
        assert!(matches!(
            err,
            ClockError::TooFarAhead { ahead_ms: 2000, .. }
        ));
        assert_eq!(clock.last(), NTP64(0));
        let near = Hlc::new(ntp64_from_unix(Duration::from_millis(1_000_500)), node(2));
        clock.observe(near, now).unwrap();
        assert!(clock.stamp_local_write(now) > near);
    }

    #[test]
    fn local_stamp_uses_the_write_time_when_it_is_ahead() {
        let mut clock = Clock::new(node(1), NTP64(0), Clock::DEFAULT_MAX_AHEAD);
        let wall = ntp64_from_unix_millis(1_700_000_000_000);
        let stamp = clock.stamp_local_write(wall);
        assert_eq!(stamp.time().as_u64(), wall.as_u64() & PHYSICAL_MASK);
    }

    fn any_hlc() -> impl Strategy<Value = Hlc> {
        (any::<u64>(), 1u128..).prop_map(|(t, n)| Hlc::new(NTP64(t), node(n)))
    }

    proptest! {
        #[test]
        fn stamps_are_strictly_monotonic_under_backward_wall_jumps(
            walls in proptest::collection::vec(any::<u64>(), 1..200),
            remotes in proptest::collection::vec(any_hlc(), 0..50),
        ) {
            let mut clock = Clock::new(node(7), NTP64(0), Duration::from_secs(u32::MAX as u64));
            let mut previous: Option<Hlc> = None;
            let mut observed_max: Option<Hlc> = None;
            for (i, wall) in walls.iter().enumerate() {
                if let Some(remote) = remotes.get(i) {
                    if clock.observe(*remote, NTP64(u64::MAX)).is_ok() {
                        observed_max = observed_max.max(Some(*remote));
                    }
                }
                let stamp = clock.stamp_local_write(NTP64(*wall));
                if let Some(p) = previous { prop_assert!(stamp > p); }
                if let Some(m) = observed_max { prop_assert!(stamp.time() > m.time() || stamp > m); }
                previous = Some(stamp);
            }
        }

        #[test]
        fn byte_order_equals_ord(a in any_hlc(), b in any_hlc()) {
            prop_assert_eq!(a.cmp(&b), a.to_bytes().cmp(&b.to_bytes()));
            prop_assert_eq!(a == b, a.to_bytes() == b.to_bytes());
            prop_assert_eq!(Hlc::from_bytes(&a.to_bytes()).unwrap(), a);
        }

        #[test]
        fn eq_agrees_with_ord_and_hash(a in any_hlc(), b in any_hlc()) {
            use std::hash::{BuildHasher, RandomState};
            let s = RandomState::new();
            prop_assert_eq!(a == b, a.cmp(&b) == std::cmp::Ordering::Equal);
            if a == b { prop_assert_eq!(s.hash_one(a), s.hash_one(b)); }
        }
    }
}
