//! Consistent hashing: hash keys and the ketama ring.

use std::time::Instant;

use http::header::COOKIE;
use http::HeaderName;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::set::{LayoutCache, State};
use super::{
    choose_tiers, Affinity, Balancer, Lease, Peer, PickContext, SelectError, UpstreamId,
    UpstreamSet,
};

/// What a consistent hash is keyed on (nginx `hash $key consistent`).
///
/// Hashed with XXH3-64, a published algorithm that does not change between
/// Rust releases or processes, so every gateway instance maps a key to the
/// same upstream. When the key is absent from a request (no such header,
/// cookie or parameter) the client address is used instead, so such
/// requests still spread and keep affinity.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use wsproxy::balance::HashKey;
///
/// // Every member of chat room `?room=42` lands on the same backend.
/// let room = HashKey::Query("room".into());
/// let user = HashKey::Header(http::HeaderName::from_static("x-user-id"));
/// let session = HashKey::Cookie("session".into());
/// # let _ = (room, user, session);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashKey {
    /// The believed client address (nginx `$remote_addr`).
    RemoteAddr,
    /// The first value of a request header (nginx `$http_name`).
    Header(HeaderName),
    /// The value of a cookie (nginx `$cookie_name`).
    Cookie(String),
    /// The request path, without the query (nginx `$uri`, not normalised).
    Path,
    /// The raw, undecoded value of a query parameter (nginx `$arg_name`).
    Query(String),
}

impl HashKey {
    /// The key's hash for this request, `None` when the request lacks it.
    fn hash(&self, ctx: &PickContext<'_>) -> Option<u64> {
        let request = ctx.request();
        match self {
            Self::RemoteAddr => Some(hash_addr(ctx)),
            Self::Header(name) => request.headers().get(name).map(|v| xxh3_64(v.as_bytes())),
            Self::Cookie(name) => cookie(request, name).map(xxh3_64),
            Self::Path => Some(xxh3_64(request.uri().path().as_bytes())),
            Self::Query(name) => query(request, name).map(|v| xxh3_64(v.as_bytes())),
        }
    }

    /// The key's hash, falling back to the client address.
    pub(crate) fn hash_or_addr(&self, ctx: &PickContext<'_>) -> u64 {
        self.hash(ctx).unwrap_or_else(|| hash_addr(ctx))
    }
}

fn hash_addr(ctx: &PickContext<'_>) -> u64 {
    match ctx.client().to_canonical() {
        std::net::IpAddr::V4(v4) => xxh3_64(&v4.octets()),
        std::net::IpAddr::V6(v6) => xxh3_64(&v6.octets()),
    }
}

// The cookie and query readers borrow from the head and allocate nothing.
// Measured with `cargo bench --bench balance -- hash-key` (a ring pick for a
// five-cookie, four-argument browser request; medians on a shared 2-core
// machine): cookie 210-227 ns and query 182-191 ns, against 1079 ns and
// 799 ns when the pairs are first collected into an owned map, as a
// general cookie-jar or query-map parser does (remote-addr, reading
// nothing: 55-65 ns). They also keep nginx's `$cookie_`/`$arg_` meaning:
// the raw value, never percent-decoded.

/// The value of cookie `name` (RFC 6265 §5.4 `name=value; name=value`),
/// across every `Cookie` header.
fn cookie<'r>(request: &'r http::Request<()>, name: &str) -> Option<&'r [u8]> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (k, v) = pair.split_at(eq);
            (k.trim_ascii() == name.as_bytes()).then(|| v.get(1..).unwrap_or_default().trim_ascii())
        })
}

/// The raw value of query parameter `name`; a bare `name` has an empty value.
fn query<'r>(request: &'r http::Request<()>, name: &str) -> Option<&'r str> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Virtual points per unit of weight. nginx uses 160, which leaves the most
/// loaded of 10 equal upstreams ~1.11× the mean (median over random
/// placements, 1.17× one time in ten); 512 brings that to ~1.07× (1.10×).
/// Each point costs 12 bytes: 60 KiB for 10 upstreams of weight 1.
pub(crate) const POINTS_PER_WEIGHT: u32 = 512;

/// The most points one ring holds (~25 MiB), reached at a total weight of
/// 4,096: past it, every count is halved once per doubling of the total
/// weight (see [`scale_shift`]), so that huge weights (SRV allows 65,535
/// each) cannot exhaust memory.
const MAX_POINTS: u64 = 1 << 21;

/// The shift that brings a tier wanting `wanted` points under
/// [`MAX_POINTS`]: the smallest `k` with `wanted <= MAX_POINTS << k`.
///
/// A power of two rather than the exact ratio, so that an upstream's count
/// (`weight × 512 >> k`) depends on the others only through `k`, which
/// changes when the total weight crosses 4,096 × 2^j, not on every join or
/// leave: with the exact ratio every change of membership rescaled every
/// upstream's points and moved keys between two old upstreams.
fn scale_shift(wanted: u64) -> u32 {
    wanted
        .div_ceil(MAX_POINTS)
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
}

/// A ketama ring for one tier: sorted points and, beside them, the index of
/// the peer owning each, plus a bucket index on the top bits of the hash
/// that narrows the binary search to a bucket or two (one cache miss
/// instead of ~16 on a large ring).
#[derive(Default)]
pub(crate) struct Ring {
    points: Vec<u64>,
    owners: Vec<u32>,
    /// `buckets[b]` is the first point at or after `b << shift`; one more
    /// entry closes the last bucket.
    buckets: Vec<u32>,
    shift: u32,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ring({} points)", self.points.len())
    }
}

impl Ring {
    fn new(peers: &[Peer]) -> Self {
        let wanted = peers.iter().fold(0u64, |sum, p| {
            sum.saturating_add(u64::from(p.weight) * u64::from(POINTS_PER_WEIGHT))
        });
        // Points depend only on the address text and weight, never on the
        // order the upstreams were added, so every gateway builds the same
        // ring and a new upstream's points only take keys, never swap old
        // ones. Two points that collide are ordered by the owners' names
        // (their rank among the names), not their positions, for the same
        // reason.
        let names: Vec<String> = peers.iter().map(|p| p.addr().to_string()).collect();
        let mut rank = vec![u32::MAX; peers.len()];
        for (r, i) in canonical_order(peers, &names).into_iter().enumerate() {
            if let Some(slot) = rank.get_mut(i) {
                *slot = u32::try_from(r).unwrap_or(u32::MAX);
            }
        }
        let shift = scale_shift(wanted);
        let mut ring: Vec<(u64, u32, u32)> = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let name = names.get(i).map_or("", String::as_str);
            let owner = u32::try_from(i).unwrap_or(u32::MAX);
            let by_name = rank.get(i).copied().unwrap_or(u32::MAX);
            // Point `j` is the same hash at every scale, so a coarser ring
            // keeps a prefix of each upstream's points.
            let count = ((u64::from(peer.weight) * u64::from(POINTS_PER_WEIGHT)) >> shift).max(1);
            for j in 0..count {
                ring.push((xxh3_64_with_seed(name.as_bytes(), j), by_name, owner));
            }
        }
        ring.sort_unstable();
        let (points, owners): (Vec<u64>, Vec<u32>) =
            ring.into_iter().map(|(p, _, o)| (p, o)).unzip();
        // About one point per bucket.
        let bits = points.len().max(2).next_power_of_two().trailing_zeros();
        let shift = 64 - bits;
        let mut buckets = Vec::with_capacity((1usize << bits) + 1);
        let mut at = 0usize;
        for b in 0..(1u64 << bits) {
            let start = b << shift;
            while points.get(at).is_some_and(|&p| p < start) {
                at += 1;
            }
            buckets.push(u32::try_from(at).unwrap_or(u32::MAX));
        }
        buckets.push(u32::try_from(points.len()).unwrap_or(u32::MAX));
        Self {
            points,
            owners,
            buckets,
            shift,
        }
    }

    /// Peer indices clockwise from `hash`, each point once: the candidates
    /// in order. Repeats a peer when it owns several points; callers stop at
    /// the first acceptable one.
    #[inline]
    pub(crate) fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let b = hash.checked_shr(self.shift).unwrap_or(0) as usize;
        let lo = self.buckets.get(b).map_or(0, |&x| x as usize);
        let hi = self.buckets.get(b + 1).map_or(lo, |&x| x as usize);
        let start = lo
            + self
                .points
                .get(lo..hi)
                .map_or(0, |bucket| bucket.partition_point(|&p| p < hash));
        let (before, from) = self.owners.split_at(start.min(self.owners.len()));
        from.iter().chain(before).map(|&o| o as usize)
    }
}

/// Indices of `peers` sorted by printed address, then weight, then id:
/// the order every gateway given the same upstream list agrees on, however
/// the list was ordered or built. `names` are the peers' addresses.
pub(crate) fn canonical_order(peers: &[Peer], names: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..peers.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            (
                names.get(i),
                peers.get(i).map(|p| p.weight),
                peers.get(i).map(Peer::id),
            )
        };
        key(a).cmp(&key(b))
    });
    order
}

/// Rings for both tiers.
#[derive(Debug)]
pub(crate) struct Rings([Ring; 2]);

impl Rings {
    pub(crate) fn new(state: &State) -> Self {
        Self(state.tiers().map(Ring::new))
    }

    #[inline]
    pub(crate) fn tier(&self, tier: usize) -> &Ring {
        &self.0[tier.min(1)]
    }

    /// The peer a key of `hash` is placed on: clockwise from the hash, the
    /// first peer `available` accepts that also fits (`fits(tier)` gives the
    /// test for one tier); when none fits, the first available one, since
    /// affinity beats load. The one ring walk of both ring strategies'
    /// [`pick`](Balancer::pick) and [`home`](Balancer::home); with a
    /// `fits` that accepts everything it is the plain ring owner.
    #[inline]
    pub(crate) fn place<'s, F: Fn(&Peer) -> bool>(
        &self,
        state: &'s State,
        hash: u64,
        available: impl Fn(&Peer) -> bool,
        fits: impl Fn(usize) -> F,
    ) -> Option<&'s Peer> {
        choose_tiers(state, |tier, peers| {
            // With nothing available (every primary down, say) the walk
            // would visit each of the ring's points, 512 per unit of
            // weight, on every pick: one pass over the peers says so first.
            if !peers.iter().any(&available) {
                return None;
            }
            let fits = fits(tier);
            let mut first = None;
            for i in self.tier(tier).walk(hash) {
                let Some(peer) = peers.get(i) else { continue };
                if !available(peer) {
                    continue;
                }
                if fits(peer) {
                    return Some(i);
                }
                first.get_or_insert(i);
            }
            first
        })
    }
}

/// The `fits` of [`Rings::place`] for a walk that ignores load.
#[inline]
pub(crate) fn any_load(_tier: usize) -> impl Fn(&Peer) -> bool {
    |_| true
}

/// Consistent hashing on a ketama ring (nginx `hash $key consistent`).
///
/// Each upstream owns 512 × weight points on a 64-bit ring (nginx places
/// 160; see [`balance`](crate::balance#cost-and-balance)); a key goes to the
/// owner of the first point at or after its hash, and walks on clockwise
/// past unavailable ones. Adding an upstream moves only the keys it takes;
/// removing one moves only its keys.
///
/// The limit: 512 points per unit of weight fit while a tier's (the
/// primaries' or the backups') total weight is at most 4,096, which is
/// 2^21 points (~25 MiB). Above that each upstream holds
/// `512 × weight >> k` points (at least one), `k` the smallest with a total
/// weight at most 4,096 × 2^k, which keeps the ring at 2^21 points or
/// fewer, plus one for each upstream whose share rounds down to none. A
/// join or leave that takes the total weight from at most 4,096 × 2^j to
/// above it, or back (4,096, 8,192, 16,384, ...), changes `k` and then also
/// moves keys between old upstreams; any other keeps the promise above.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::{net::SocketAddr, time::Instant};
/// use wsproxy::balance::{Balancer, ConsistentHash, HashKey, PickContext, Upstream, UpstreamSet};
///
/// let set: UpstreamSet = (9001..=9004)
///     .map(|port| Upstream::new(SocketAddr::from(([127, 0, 0, 1], port))))
///     .collect();
/// let ring = ConsistentHash::new(set, HashKey::Query("room".into()));
/// let now = Instant::now();
/// let alice = http::Request::get("/ws?room=42&user=alice").body(())?;
/// let bob = http::Request::get("/ws?user=bob&room=42").body(())?;
/// let a = ring.pick(&PickContext::new("127.0.0.1".parse()?, &alice, now))?;
/// let b = ring.pick(&PickContext::new("127.0.0.2".parse()?, &bob, now))?;
/// assert_eq!(a.id(), b.id());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ConsistentHash {
    pub(super) set: UpstreamSet,
    pub(super) key: HashKey,
    pub(super) rings: LayoutCache<Rings>,
}

impl ConsistentHash {
    /// Consistent hashing of `key` over `set`.
    pub fn new(set: UpstreamSet, key: HashKey) -> Self {
        Self {
            set,
            key,
            rings: LayoutCache::default(),
        }
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Lease, SelectError> {
        let state = self.set.load();
        let hash = self.key.hash_or_addr(ctx);
        self.rings.with(&state, Rings::new, |rings| {
            rings
                .place(&state, hash, |peer| peer.is_available(ctx), any_load)
                .map(Peer::lease)
                .ok_or(SelectError::NoneAvailable)
        })
    }

    /// The key's hash ([`HashKey`], or the client address when the request
    /// lacks the key).
    fn affinity(&self, ctx: &PickContext<'_>) -> Option<Affinity> {
        Some(Affinity::from_hash(self.key.hash_or_addr(ctx)))
    }

    /// Where the key hash lands among the upstreams available at `now`,
    /// load aside ([`BoundedLoad`](super::BoundedLoad)'s home too).
    fn home(&self, affinity: Affinity, now: Instant) -> Option<UpstreamId> {
        let state = self.set.load();
        self.rings.with(&state, Rings::new, |rings| {
            rings
                .place(
                    &state,
                    affinity.hash(),
                    |peer| peer.is_available_at(now),
                    any_load,
                )
                .map(Peer::id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Upstream;
    use super::*;
    use std::net::IpAddr;

    fn pick_path(b: &ConsistentHash, path: &str) -> u16 {
        let request = http::Request::get(path).body(()).unwrap();
        port(&b.pick(&ctx(&request, epoch())).unwrap())
    }

    #[test]
    fn pins_picks_and_removing_a_node_remaps_only_its_keys() {
        let (set, ids) = set_of(&[1, 1, 1, 1]);
        let b = ConsistentHash::new(set.clone(), HashKey::Path);
        let paths: Vec<String> = (0..12).map(|i| format!("/room/{i}")).collect();
        let before: Vec<u16> = paths.iter().map(|p| pick_path(&b, p)).collect();
        // Pinned: XXH3 and the point layout are stable, so these never change.
        assert_eq!(before, [1, 2, 0, 3, 1, 2, 0, 2, 3, 3, 0, 3]);
        set.remove(ids[1]);
        let after: Vec<u16> = paths.iter().map(|p| pick_path(&b, p)).collect();
        for (i, (&x, &y)) in before.iter().zip(&after).enumerate() {
            if x == 1 {
                assert_ne!(y, 1, "key {i}"); // changed
            } else {
                assert_eq!(x, y, "key {i} moved between survivors");
            }
        }
    }

    /// Ten upstreams of `weight`, then an eleventh joins: the keys of 2,000
    /// that moved, each checked to have moved to it.
    fn keys_moved_by_a_join(weight: u32) -> usize {
        let (set, _) = set_of(&[weight; 10]);
        let b = ConsistentHash::new(set.clone(), HashKey::Path);
        let paths: Vec<String> = (0..2000).map(|i| format!("/k/{i}")).collect();
        let before: Vec<u16> = paths.iter().map(|p| pick_path(&b, p)).collect();
        set.add(Upstream::new(addr(9010)).weight(weight));
        let after: Vec<u16> = paths.iter().map(|p| pick_path(&b, p)).collect();
        let mut moved = 0;
        for (&x, &y) in before.iter().zip(&after) {
            if x != y {
                assert_eq!(y, 10, "a key moved between two old upstreams");
                moved += 1;
            }
        }
        moved
    }

    #[test]
    fn a_tier_with_nothing_available_is_not_walked() {
        let (set, _) = set_of(&[100, 100, 100]);
        let state = set.load();
        let rings = Rings::new(&state);
        let asked = std::cell::Cell::new(0);
        let down = |_: &Peer| {
            asked.set(asked.get() + 1);
            false
        };
        assert!(rings.place(&state, 42, down, any_load).is_none());
        // One look at each of the three peers, not one per ring point
        // (153,600 of them).
        assert_eq!(asked.get(), 3);
    }

    #[test]
    fn adding_a_node_moves_keys_only_to_it() {
        let moved = keys_moved_by_a_join(1);
        assert!((60..320).contains(&moved), "{moved}");
    }

    /// Above 4,096 units of weight the ring is scaled down; a join that
    /// keeps the scale still moves keys only to the newcomer.
    #[test]
    fn adding_a_node_above_the_point_cap_moves_keys_only_to_it() {
        let moved = keys_moved_by_a_join(500);
        // Its share is 2000 / 11, about 182.
        assert!((120..250).contains(&moved), "{moved}");
    }

    /// Shuffled lists with weights, and the same upstream down in each:
    /// the ring hashes printed addresses and weights, never ids or
    /// positions, so the owners and the walk past a down one agree.
    #[test]
    fn shuffled_weighted_lists_place_keys_alike_even_past_a_down_upstream() {
        let list = [(9004, 2), (9000, 1), (9003, 3), (9001, 1), (9002, 1)];
        let build = |order: [usize; 5]| {
            let set = UpstreamSet::new();
            let ids: Vec<UpstreamId> = order
                .iter()
                .map(|&i| set.add(Upstream::new(addr(list[i].0)).weight(list[i].1)))
                .collect();
            // 9003 down everywhere.
            let down = order.iter().position(|&i| i == 2).unwrap();
            (
                ConsistentHash::new(set.clone(), HashKey::Path),
                set,
                ids[down],
            )
        };
        let rings = [
            build([0, 1, 2, 3, 4]),
            build([4, 3, 2, 1, 0]),
            build([2, 4, 0, 3, 1]),
        ];
        let paths: Vec<String> = (0..1000).map(|i| format!("/key/{i}")).collect();
        let picks =
            |r: &ConsistentHash| -> Vec<u16> { paths.iter().map(|p| pick_path(r, p)).collect() };
        let first = picks(&rings[0].0);
        for (ring, _, _) in &rings[1..] {
            assert_eq!(picks(ring), first);
        }
        for (_, set, down) in &rings {
            set.set_down(*down, true);
        }
        let first = picks(&rings[0].0);
        assert!(!first.contains(&3));
        for (ring, _, _) in &rings[1..] {
            assert_eq!(picks(ring), first);
        }
    }

    #[test]
    fn the_ring_does_not_depend_on_insertion_order() {
        let forward: UpstreamSet = (0..5).map(|i| Upstream::new(addr(9000 + i))).collect();
        let backward: UpstreamSet = (0..5)
            .rev()
            .map(|i| Upstream::new(addr(9000 + i)))
            .collect();
        let f = ConsistentHash::new(forward, HashKey::Path);
        let b = ConsistentHash::new(backward, HashKey::Path);
        for i in 0..200 {
            let path = format!("/{i}");
            assert_eq!(pick_path(&f, &path), pick_path(&b, &path));
        }
    }

    #[test]
    fn unavailable_node_sends_its_keys_clockwise_deterministically() {
        let (set, ids) = set_of(&[1, 1, 1]);
        let b = ConsistentHash::new(set.clone(), HashKey::Path);
        let request = http::Request::get("/x").body(()).unwrap();
        let now = epoch();
        let first = b.pick(&ctx(&request, now)).unwrap().id();
        let failed = [first];
        let next = b
            .pick(&ctx(&request, now).with_failed(&failed))
            .unwrap()
            .id();
        assert_ne!(first, next);
        set.set_down(first, true);
        assert_eq!(b.pick(&ctx(&request, now)).unwrap().id(), next);
        assert!(ids.contains(&next));
    }

    #[test]
    fn hash_keys_read_header_cookie_path_query_and_address() {
        let request = http::Request::get("/a/b?x=1&room=42&flag")
            .header("x-user", "alice")
            .header("cookie", "theme=dark; session=s1")
            .header("cookie", "other=1")
            .body(())
            .unwrap();
        let now = epoch();
        let ctx = PickContext::new(IpAddr::from([127, 0, 0, 9]), &request, now);
        let h = |key: HashKey| key.hash(&ctx);
        assert_eq!(
            h(HashKey::Header(HeaderName::from_static("x-user"))),
            Some(xxh3_64(b"alice"))
        );
        assert_eq!(h(HashKey::Cookie("session".into())), Some(xxh3_64(b"s1")));
        assert_eq!(h(HashKey::Cookie("other".into())), Some(xxh3_64(b"1")));
        assert_eq!(h(HashKey::Cookie("sess".into())), None);
        assert_eq!(h(HashKey::Path), Some(xxh3_64(b"/a/b")));
        assert_eq!(h(HashKey::Query("room".into())), Some(xxh3_64(b"42")));
        assert_eq!(h(HashKey::Query("flag".into())), Some(xxh3_64(b"")));
        assert_eq!(h(HashKey::Query("roo".into())), None);
        assert_eq!(h(HashKey::RemoteAddr), Some(xxh3_64(&[127, 0, 0, 9])));
        // Absent keys fall back to the client address.
        assert_eq!(
            HashKey::Header(HeaderName::from_static("x-none")).hash_or_addr(&ctx),
            xxh3_64(&[127, 0, 0, 9])
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Any set of 2..12 upstreams, any one removed: only its keys move.
        #[test]
        fn removing_any_node_moves_only_its_keys(
            ports in proptest::collection::btree_set(1000u16..60000, 2..12),
            victim in 0usize..12,
        ) {
            let set: UpstreamSet = ports.iter().map(|&p| Upstream::new(addr(p))).collect();
            let b = ConsistentHash::new(set.clone(), HashKey::Path);
            let paths: Vec<String> = (0..300).map(|i| format!("/p/{i}")).collect();
            let pick = |path: &str| {
                let request = http::Request::get(path).body(()).unwrap();
                b.pick(&ctx(&request, epoch())).unwrap().id()
            };
            let before: Vec<_> = paths.iter().map(|p| pick(p)).collect();
            let gone = set.snapshot().primaries()[victim % ports.len()].id();
            set.remove(gone);
            for (path, &x) in paths.iter().zip(&before) {
                let y = pick(path);
                if x == gone {
                    proptest::prop_assert_ne!(y, gone);
                } else {
                    proptest::prop_assert_eq!(x, y);
                }
            }
        }
    }

    #[test]
    fn bucket_index_finds_the_same_point_as_a_full_search() {
        let (set, _) = set_of(&[1, 2, 3]);
        let state = set.load();
        let ring = Ring::new(state.tiers()[0]);
        let mut rng = fastrand::Rng::with_seed(3);
        let probes = (0..5000)
            .map(|_| rng.u64(..))
            .chain([0, u64::MAX, ring.points[0]]);
        for h in probes {
            let full = ring.points.partition_point(|&p| p < h) % ring.points.len();
            assert_eq!(ring.walk(h).next(), Some(ring.owners[full] as usize), "{h}");
        }
    }

    #[test]
    fn huge_weights_are_scaled_to_the_point_cap() {
        let (set, _) = set_of(&[u32::MAX, 1]);
        let state = set.load();
        let ring = Ring::new(state.tiers()[0]);
        assert!(ring.points.len() as u64 <= MAX_POINTS + 1);
        assert!(ring.owners.contains(&1));
    }

    #[test]
    fn weight_gives_proportional_points() {
        let (set, _) = set_of(&[3, 1]);
        let b = ConsistentHash::new(set, HashKey::Path);
        let heavy = (0..4000)
            .filter(|i| pick_path(&b, &format!("/{i}")) == 0)
            .count();
        assert!((2700..3300).contains(&heavy), "{heavy}");
    }
}
