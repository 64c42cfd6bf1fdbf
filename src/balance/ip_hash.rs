//! nginx `ip_hash`: client affinity by address.

use std::time::Instant;

use super::ring::canonical_order;
use super::set::{LayoutCache, State};
use super::{
    choose_tiers, Affinity, Balancer, Lease, Peer, PickContext, SelectError, UpstreamId,
    UpstreamSet,
};

/// nginx `ip_hash` (`ngx_http_upstream_get_ip_hash_peer`).
///
/// An IPv4 client is keyed by its first three octets, so a whole /24 lands
/// on one upstream; an IPv6 client by its whole address (an IPv4-mapped
/// IPv6 address counts as IPv4). The hash walks weights, so an upstream of
/// weight 2 takes twice the clients. When the chosen upstream is
/// unavailable, the hash is stirred again with the same octets, giving every
/// client the same next choice; after 20 tries the first available upstream
/// after the last choice is taken, as nginx falls back to round-robin.
/// nginx refuses `backup` with `ip_hash`; here backups serve when no primary
/// is available, as with every strategy. Down upstreams keep their share of
/// the weights, so marking one down moves only its clients (nginx advises
/// `down` rather than removal for this reason).
///
/// Unlike nginx, which walks its `server` lines in the order written, the
/// weights are walked in the upstreams' address order (then weight): two
/// gateways given the same upstreams in any order, or built up by DNS
/// answers in any order, place every client alike.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{Balancer, IpHash, PickContext, Upstream, UpstreamSet};
///
/// let set: UpstreamSet = (9001..=9003)
///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
///     .collect();
/// let ip_hash = IpHash::new(set);
/// let request = http::Request::get("/").body(())?;
/// let now = Instant::now();
/// let first = ip_hash.pick(&PickContext::new("127.0.0.1".parse()?, &request, now))?;
/// let same_24 = ip_hash.pick(&PickContext::new("127.0.0.200".parse()?, &request, now))?;
/// assert_eq!(first.id(), same_24.id());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct IpHash {
    set: UpstreamSet,
    orders: LayoutCache<[Order; 2]>,
}

impl IpHash {
    /// IP hash over `set`.
    pub fn new(set: UpstreamSet) -> Self {
        Self {
            set,
            orders: LayoutCache::default(),
        }
    }
}

/// One tier's peers in address order, with running sums of their weights.
#[derive(Debug, Default)]
struct Order {
    peers: Vec<usize>,
    cumulative: Vec<u64>,
}

impl Order {
    fn tiers(state: &State) -> [Order; 2] {
        state.tiers().map(|peers| {
            let names: Vec<String> = peers.iter().map(|p| p.addr().to_string()).collect();
            let order = canonical_order(peers, &names);
            let cumulative = order
                .iter()
                .scan(0u64, |sum, &i| {
                    *sum += peers.get(i).map_or(0, |p| u64::from(p.weight));
                    Some(*sum)
                })
                .collect();
            Order {
                peers: order,
                cumulative,
            }
        })
    }

    /// The position (in address order) owning weight unit `x`, as
    /// nginx's `w -= peer->weight` walk but by binary search.
    fn by_weight(&self, x: u64) -> usize {
        self.cumulative.partition_point(|&sum| sum <= x)
    }

    /// The peer index at position `at`.
    fn peer(&self, at: usize) -> usize {
        self.peers.get(at).copied().unwrap_or(usize::MAX)
    }
}

/// nginx's constants: start at 89, stir with `hash * 113 + octet` modulo the
/// prime 6271, give up hashing after 20 tries.
const SEED: u64 = 89;
const MULTIPLIER: u64 = 113;
const MODULUS: u64 = 6271;
const TRIES: usize = 20;

impl IpHash {
    /// The peer nginx `ip_hash` places the client of `affinity` on, among
    /// the peers `available` accepts: the one code path of
    /// [`pick`](Balancer::pick) and [`home`](Balancer::home).
    #[inline]
    fn place<'s>(
        &self,
        state: &'s State,
        affinity: Affinity,
        available: impl Fn(&Peer) -> bool,
    ) -> Option<&'s Peer> {
        let (octets, len) = affinity.ip_key();
        let octets = octets.get(..len).unwrap_or_default();
        self.orders.with(state, Order::tiers, |orders| {
            choose_tiers(state, |tier, peers| {
                let order = orders.get(tier)?;
                let total = state.total_weight(tier);
                if total == 0 {
                    return None;
                }
                let mut hash = SEED;
                let mut chosen = 0;
                for _ in 0..TRIES {
                    for &octet in octets {
                        hash = (hash * MULTIPLIER + u64::from(octet)) % MODULUS;
                    }
                    chosen = order.by_weight(hash % total);
                    if peers.get(order.peer(chosen)).is_some_and(&available) {
                        return Some(order.peer(chosen));
                    }
                }
                (1..=peers.len())
                    .map(|step| order.peer((chosen + step) % peers.len()))
                    .find(|&i| peers.get(i).is_some_and(&available))
            })
        })
    }
}

impl Balancer for IpHash {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let state = self.set.load();
        let affinity = Affinity::from_ip(ctx.client());
        self.place(&state, affinity, |peer| peer.is_available(ctx))
            .map(Peer::lease)
            .ok_or(SelectError::NoneAvailable)
    }

    /// The client's address as `ip_hash` keys it: the /24 of an IPv4
    /// address, the whole IPv6 address.
    fn affinity(&self, ctx: &PickContext<'_>) -> Option<Affinity> {
        Some(Affinity::from_ip(ctx.client()))
    }

    fn home(&self, affinity: Affinity, now: Instant) -> Option<UpstreamId> {
        let state = self.set.load();
        self.place(&state, affinity, |peer| peer.is_available_at(now))
            .map(Peer::id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn pick(b: &IpHash, ip: IpAddr) -> u16 {
        let request = request();
        port(&b.pick(&PickContext::new(ip, &request, epoch())).unwrap())
    }

    #[test]
    fn same_client_same_upstream_for_1000_picks() {
        let (set, _) = set_of(&[1, 1, 1, 1, 1]);
        let b = IpHash::new(set);
        for c in 0..20u8 {
            let ip = IpAddr::from([10, c, 7, 1]);
            let first = pick(&b, ip);
            assert!((0..1000).all(|_| pick(&b, ip) == first));
        }
    }

    #[test]
    fn ipv4_clients_group_by_24_and_ipv6_by_whole_address() {
        let (set, _) = set_of(&[1, 1, 1, 1, 1, 1, 1]);
        let b = IpHash::new(set);
        for c in 0..50u8 {
            let base = pick(&b, IpAddr::from([10, 1, c, 0]));
            assert!((1..=255).all(|d| pick(&b, IpAddr::from([10, 1, c, d])) == base));
            let mapped = Ipv4Addr::new(10, 1, c, 9).to_ipv6_mapped();
            assert_eq!(pick(&b, IpAddr::V6(mapped)), base);
        }
        // /24s spread over the upstreams.
        let mut seen = [false; 7];
        for c in 0..50u8 {
            seen[usize::from(pick(&b, IpAddr::from([10, 1, c, 0])))] = true;
        }
        assert!(seen.iter().all(|&s| s));
        // IPv6 keys the whole address: the last byte matters.
        let distinct = (0..64u16)
            .map(|i| pick(&b, IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))))
            .collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn pins_nginx_picks() {
        // hash = 89; for each of 127, 0, 0: hash = (hash * 113 + octet) % 6271
        // -> 3913, 3199, 4040; 4040 % 3 = 2.
        let (set, _) = set_of(&[1, 1, 1]);
        let b = IpHash::new(set);
        assert_eq!(pick(&b, IpAddr::from([127, 0, 0, 1])), 2);
    }

    #[test]
    fn unavailable_upstream_gives_a_deterministic_next_choice() {
        let (set, ids) = set_of(&[1, 1, 1, 1]);
        let b = IpHash::new(set);
        let request = request();
        let now = epoch();
        for c in 0..30u8 {
            let ip = IpAddr::from([192, 0, c, 1]);
            let first = b.pick(&PickContext::new(ip, &request, now)).unwrap().id();
            let failed = [first];
            let ctx = PickContext::new(ip, &request, now).with_failed(&failed);
            let next = b.pick(&ctx).unwrap().id();
            assert_ne!(next, first);
            assert!((0..100).all(|_| b.pick(&ctx).unwrap().id() == next));
        }
        // Every upstream failed but one: found by the fallback scan.
        let failed = [ids[0], ids[1], ids[2]];
        let ctx = PickContext::new(IpAddr::from([1, 2, 3, 4]), &request, now).with_failed(&failed);
        assert_eq!(b.pick(&ctx).unwrap().id(), ids[3]);
    }

    /// Two gateways given the same upstreams in other orders (weights
    /// included) place every client alike; nginx would not.
    #[test]
    fn any_order_of_the_same_upstreams_places_clients_alike() {
        let list = [(9003, 1), (9000, 2), (9002, 1), (9001, 3), (9010, 1)];
        let build = |order: &[usize]| {
            let set = UpstreamSet::new();
            for &i in order {
                let (p, w) = list[i];
                set.add(crate::balance::Upstream::new(addr(p)).weight(w));
            }
            IpHash::new(set)
        };
        let a = build(&[0, 1, 2, 3, 4]);
        let b = build(&[4, 3, 2, 1, 0]);
        let c = build(&[2, 0, 4, 1, 3]);
        for x in 0..=255u8 {
            let ip = IpAddr::from([10, x, 3, 1]);
            let pa = pick(&a, ip);
            assert_eq!(pa, pick(&b, ip), "{ip}");
            assert_eq!(pa, pick(&c, ip), "{ip}");
        }
    }

    #[test]
    fn weights_skew_the_share() {
        let (set, _) = set_of(&[3, 1]);
        let b = IpHash::new(set);
        let heavy = (0..=255u8)
            .flat_map(|x| (0..8u8).map(move |y| IpAddr::from([10, x, y, 1])))
            .filter(|&ip| pick(&b, ip) == 0)
            .count();
        // 3/4 of 2048 /24s, give or take.
        assert!((1300..1800).contains(&heavy), "{heavy}");
    }
}
