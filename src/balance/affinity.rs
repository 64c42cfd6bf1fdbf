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
    use super::*;

    #[test]
    fn ipv4_keys_are_the_first_three_octets() {
        let a = Affinity::from_ip(IpAddr::from([10, 1, 2, 3]));
        assert_eq!(a.ip_key(), ([10, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 3));
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
            assert_eq!(Affinity::from_bits(Affinity::from_hash(h).to_bits()).hash(), h);
        }
    }
}
