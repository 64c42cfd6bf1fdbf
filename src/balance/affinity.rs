//! What a hash strategy remembers of a placed connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a balancer with affinity remembers of a placed connection: enough
/// to say later where that connection would be placed now
/// ([`Balancer::home`](super::Balancer::home)). Opaque, 16 bytes, `Copy`.
///
/// Meaningful only to the kind of balancer that gave it: an [`IpHash`]
/// affinity holds the address octets nginx `ip_hash` hashes, a
/// [`ConsistentHash`] or [`BoundedLoad`] affinity the 64-bit key hash. A
/// host keeps one beside each open tunnel and asks the balancer for its
/// home when it rebalances.
///
/// [`IpHash`]: super::IpHash
/// [`ConsistentHash`]: super::ConsistentHash
/// [`BoundedLoad`]: super::BoundedLoad
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use wsproxy::balance::Affinity;
///
/// // ip_hash keys an IPv4 client by its /24: the last octet is dropped.
/// let a = Affinity::from_ip("192.0.2.1".parse()?);
/// assert_eq!(a, Affinity::from_ip("192.0.2.200".parse()?));
/// assert_eq!(a, Affinity::from_ip("::ffff:192.0.2.7".parse()?));
/// assert_ne!(a, Affinity::from_ip("192.0.3.1".parse()?));
/// assert_eq!(Affinity::from_bits(a.to_bits()), a);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Affinity(u128);

/// The IPv4-mapped prefix `::ffff:0:0/96` (RFC 4291 §2.5.5.2). A client
/// address is canonicalised first, so no IPv6 key carries it: an IPv4 key
/// stored under it can never be mistaken for an IPv6 one.
const V4_MAPPED: u128 = 0xffff << 32;
const V4_MAPPED_MASK: u128 = !0 << 32;

impl Affinity {
    /// The affinity of a key hash, as [`ConsistentHash`](super::ConsistentHash)
    /// and [`BoundedLoad`](super::BoundedLoad) compute it.
    #[inline]
    pub const fn from_hash(hash: u64) -> Self {
        Self(hash as u128)
    }

    /// The affinity of a client as nginx `ip_hash` keys it: the first three
    /// octets of an IPv4 address (an IPv4-mapped IPv6 address counts as
    /// IPv4), or the whole IPv6 address.
    #[inline]
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Self(u128::from(Ipv4Addr::new(a, b, c, 0).to_ipv6_mapped()))
            }
            IpAddr::V6(v6) => Self(u128::from(v6)),
        }
    }

    /// The raw bits, to store or send elsewhere.
    #[inline]
    pub const fn to_bits(self) -> u128 {
        self.0
    }

    /// An affinity from bits [`to_bits`](Self::to_bits) gave.
    #[inline]
    pub const fn from_bits(bits: u128) -> Self {
        Self(bits)
    }

    /// The key hash of a [`from_hash`](Self::from_hash) affinity (the low
    /// 64 bits of any other).
    #[inline]
    pub(crate) const fn hash(self) -> u64 {
        // Truncation wanted: a hash affinity holds only the low 64 bits.
        self.0 as u64
    }

    /// The octets nginx `ip_hash` hashes for a [`from_ip`](Self::from_ip)
    /// affinity, and how many of them count (3 for IPv4, 16 for IPv6).
    #[inline]
    pub(crate) fn ip_key(self) -> ([u8; 16], usize) {
        let octets = Ipv6Addr::from(self.0).octets();
        if self.0 & V4_MAPPED_MASK == V4_MAPPED {
            let mut key = [0u8; 16];
            key[..3].copy_from_slice(&octets[12..15]);
            (key, 3)
        } else {
            (octets, 16)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{
        Balancer, BoundedLoad, ConsistentHash, HashKey, IpHash, Lease, LeastConn, PickContext,
        RandomTwo, RoundRobin, Upstream, UpstreamId, UpstreamSet,
    };
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// The three strategies with affinity, keyed on the client address so
    /// that one list of clients exercises all of them.
    fn with_affinity(set: &UpstreamSet) -> Vec<Arc<dyn Balancer>> {
        vec![
            Arc::new(IpHash::new(set.clone())),
            Arc::new(ConsistentHash::new(set.clone(), HashKey::RemoteAddr)),
            Arc::new(BoundedLoad::new(set.clone(), HashKey::RemoteAddr)),
        ]
    }

    /// IPv4 /24s, IPv6 addresses and an IPv4-mapped one.
    fn clients() -> Vec<IpAddr> {
        let v4 = (0..=255u8).flat_map(|x| (0..3u8).map(move |y| IpAddr::from([10, x, y, 7])));
        let v6 = (0..200u16).map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, i, 1)));
        let mapped = std::iter::once(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()));
        v4.chain(v6).chain(mapped).collect()
    }

    /// (pick, home) for every client; leases dropped at once, so no load.
    fn placements(b: &dyn Balancer, now: Instant) -> Vec<(UpstreamId, Option<UpstreamId>)> {
        let request = request();
        clients()
            .into_iter()
            .map(|ip| {
                let ctx = PickContext::new(ip, &request, now);
                let picked = b.pick(&ctx).unwrap().id();
                let affinity = b.affinity(&ctx).unwrap();
                (picked, b.home(affinity, now))
            })
            .collect()
    }

    #[test]
    fn home_is_where_pick_places_every_key() {
        let (set, _) = set_of(&[1, 2, 1, 3, 1]);
        set.add(Upstream::new(addr(9100)).backup(true));
        let now = epoch();
        for b in with_affinity(&set) {
            let placed = placements(&*b, now);
            assert!(
                placed.iter().all(|&(pick, home)| home == Some(pick)),
                "{b:?}"
            );
            // Not one upstream for everyone: the keys really spread.
            let distinct: std::collections::HashSet<_> = placed.iter().map(|p| p.0).collect();
            assert_eq!(distinct.len(), 5, "{b:?}");
        }
        // A ConsistentHash keyed on something else agrees with its own picks.
        let ring = ConsistentHash::new(set, HashKey::Query("room".into()));
        for room in 0..300 {
            let request = http::Request::get(format!("/ws?room={room}"))
                .body(())
                .unwrap();
            let ctx = ctx(&request, now);
            let home = ring.home(ring.affinity(&ctx).unwrap(), now);
            assert_eq!(home, Some(ring.pick(&ctx).unwrap().id()), "room {room}");
        }
    }

    #[test]
    fn home_changes_exactly_for_the_keys_pick_moves_when_an_upstream_joins() {
        for (i, strategy) in ["ip-hash", "consistent", "bounded"].into_iter().enumerate() {
            let (set, _) = set_of(&[1, 1, 1]);
            let b = with_affinity(&set).swap_remove(i);
            let now = epoch();
            let before = placements(&*b, now);
            let joined = set.add(Upstream::new(addr(9003)));
            let after = placements(&*b, now);
            let mut moved = 0;
            for (&(pick0, home0), &(pick1, home1)) in before.iter().zip(&after) {
                assert_eq!((home0, home1), (Some(pick0), Some(pick1)), "{strategy}");
                if home0 != home1 {
                    moved += 1;
                    if strategy != "ip-hash" {
                        // Ketama: a key moves only to the newcomer.
                        assert_eq!(home1, Some(joined), "{strategy}");
                    }
                }
            }
            assert!(moved > 0 && moved < before.len(), "{strategy}: {moved}");
        }
    }

    #[test]
    fn an_unavailable_upstream_is_never_a_home() {
        let (set, ids) = set_of(&[1; 6]);
        let t0 = epoch();
        let request = request();
        // Down by hand, down by a check, draining, and failed (max_fails=1).
        set.set_down(ids[0], true);
        set.set_check_down(ids[1], true);
        set.set_draining(ids[2], true);
        let failed = set.snapshot().get(ids[3]).unwrap().lease();
        failed.report_failure(t0);
        drop(failed);
        let out = [ids[0], ids[1], ids[2], ids[3]];
        for b in with_affinity(&set) {
            let placed = placements(&*b, t0);
            for &(pick, home) in &placed {
                assert_eq!(home, Some(pick), "{b:?}");
                assert!(!out.contains(&pick), "{b:?} placed a key on {pick}");
            }
            // fail_timeout (10 s) over: the failed upstream is a home again.
            let later = t0 + Duration::from_secs(10);
            let placed = placements(&*b, later);
            assert!(placed.iter().all(|&(pick, home)| home == Some(pick)));
            assert!(
                placed.iter().any(|&(_, home)| home == Some(ids[3])),
                "{b:?}"
            );
        }
        // Nothing available: no home, as pick has none.
        set.set_down(ids[4], true);
        set.set_down(ids[5], true);
        set.set_down(ids[3], true);
        for b in with_affinity(&set) {
            let ctx = ctx(&request, t0);
            assert!(b.pick(&ctx).is_err());
            assert_eq!(b.home(b.affinity(&ctx).unwrap(), t0), None, "{b:?}");
        }
    }

    #[test]
    fn a_bounded_home_ignores_the_load_bound() {
        let (set, _) = set_of(&[1; 4]);
        let bounded = BoundedLoad::new(set.clone(), HashKey::Path);
        let ring = ConsistentHash::new(set, HashKey::Path);
        let request = http::Request::get("/hot").body(()).unwrap();
        let now = epoch();
        let ctx = ctx(&request, now);
        let owner = ring.pick(&ctx).unwrap().id();
        // One hot key fills its owner up to the bound and spills over.
        let leases: Vec<Lease> = (0..40).map(|_| bounded.pick(&ctx).unwrap()).collect();
        assert!(leases.iter().any(|l| l.id() != owner));
        assert_ne!(bounded.pick(&ctx).unwrap().id(), owner);
        // Its home is still the ring owner: where it goes once load allows.
        assert_eq!(
            bounded.home(bounded.affinity(&ctx).unwrap(), now),
            Some(owner)
        );
    }

    #[test]
    fn strategies_without_affinity_have_no_home() {
        let (set, _) = set_of(&[1, 1]);
        let request = request();
        let now = epoch();
        let none: Vec<Arc<dyn Balancer>> = vec![
            Arc::new(RoundRobin::new(set.clone())),
            Arc::new(LeastConn::new(set.clone())),
            Arc::new(RandomTwo::new(set)),
        ];
        for b in none {
            assert_eq!(b.affinity(&ctx(&request, now)), None, "{b:?}");
            assert_eq!(b.home(Affinity::from_hash(7), now), None, "{b:?}");
        }
    }

    #[test]
    fn ipv4_keys_are_the_first_three_octets() {
        let a = Affinity::from_ip(IpAddr::from([10, 1, 2, 3]));
        assert_eq!(
            a.ip_key(),
            ([10, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 3)
        );
        assert_eq!(a, Affinity::from_ip(IpAddr::from([10, 1, 2, 99])));
    }

    #[test]
    fn ipv6_keys_are_the_whole_address_and_never_look_like_ipv4() {
        let v6: Ipv6Addr = "fd00::1:2:3".parse().unwrap();
        let a = Affinity::from_ip(IpAddr::V6(v6));
        assert_eq!(a.ip_key(), (v6.octets(), 16));
        // `::10.1.2.0` (IPv4-compatible, deprecated) is not an IPv4 client.
        let compat = Affinity::from_ip(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 0).to_ipv6_compatible()));
        assert_eq!(compat.ip_key().1, 16);
        assert_ne!(compat, Affinity::from_ip(IpAddr::from([10, 1, 2, 0])));
    }

    #[test]
    fn hash_affinities_round_trip() {
        for h in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(Affinity::from_hash(h).hash(), h);
            assert_eq!(
                Affinity::from_bits(Affinity::from_hash(h).to_bits()).hash(),
                h
            );
        }
    }
}
