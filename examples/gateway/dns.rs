//! Upstreams kept current from DNS: `--upstream dns:NAME:PORT` (A/AAAA,
//! nginx `server NAME:PORT resolve`) and `--upstream srv:NAME` (SRV ports
//! and weights, HAProxy `server-template` + `resolvers`), in `--route` lists
//! too, with `--resolver`, `--resolve-min-ttl`, `--resolve-max-ttl` and
//! `--resolve-drain-timeout`. One `wsproxy::dns::Discovery` per DNS name of
//! each group; the options written after a DNS upstream (weight,
//! max_fails, fail_timeout, backup) are the template every address it
//! resolves to gets.
//!
//! cli.rs parses `dns:NAME:PORT` into an upstream named `dns:NAME` with
//! port PORT, and `srv:NAME` into one named `srv:NAME` with port 0: they
//! stay out of the groups' sets (see [`fixed`]) and become discoveries
//! here.

use wsproxy::balance::{Upstream, UpstreamAddr};

use crate::cli::Args;

/// The name a DNS upstream of cli.rs stands for: `(name, Some(port))` for
/// A/AAAA, `(name, None)` for SRV.
fn dns_name(upstream: &Upstream) -> Option<(&str, Option<u16>)> {
    let UpstreamAddr::Name { host, port } = upstream.addr() else {
        return None;
    };
    if let Some(name) = host.strip_prefix("dns:") {
        return Some((name, Some(*port)));
    }
    host.strip_prefix("srv:").map(|name| (name, None))
}

/// The upstreams of a list that are addresses, not DNS names.
pub fn fixed(upstreams: &[Upstream]) -> impl Iterator<Item = Upstream> + '_ {
    upstreams.iter().filter(|u| dns_name(u).is_none()).cloned()
}

/// Each group's name and upstream list as the flags give them, in the order
/// main.rs builds the groups.
fn lists(args: &Args) -> Vec<(&str, Vec<Upstream>)> {
    let mut lists = Vec::new();
    if !args.upstream.is_empty() {
        let list = args.upstream.iter().map(|(u, _)| u.clone()).collect();
        lists.push(("default", list));
    }
    for spec in &args.route {
        lists.push((spec.name.as_str(), spec.upstreams.clone()));
    }
    lists
}

/// Usage errors, before anything is bound.
pub fn check(args: &Args) -> Result<(), String> {
    let any = lists(args)
        .iter()
        .any(|(_, list)| list.iter().any(|u| dns_name(u).is_some()));
    if !any {
        return Ok(());
    }
    if !cfg!(feature = "dns") {
        return Err("dns: and srv: upstreams need the gateway built with `--features dns`".into());
    }
    if args.resolve_min_ttl > args.resolve_max_ttl {
        return Err(format!(
            "--resolve-min-ttl {:?} is above --resolve-max-ttl {:?}",
            args.resolve_min_ttl, args.resolve_max_ttl
        ));
    }
    Ok(())
}

#[cfg(feature = "dns")]
pub use with_feature::start;

#[cfg(not(feature = "dns"))]
pub use without_feature::start;

#[cfg(not(feature = "dns"))]
mod without_feature {
    use super::Args;
    use wsproxy::balance::UpstreamSet;
    use wsproxy::UpstreamGroup;

    /// Nothing to keep without the feature.
    pub struct Discoveries;

    /// [`check`](super::check) refused every DNS upstream already.
    pub async fn start(
        _args: &Args,
        _groups: &[(UpstreamSet, UpstreamGroup)],
    ) -> std::io::Result<Discoveries> {
        Ok(Discoveries)
    }
}

#[cfg(feature = "dns")]
mod with_feature {
    use std::time::Duration;

    use super::{dns_name, lists, Args};
    use wsproxy::balance::{Rebalance, UpstreamSet};
    use wsproxy::dns::{Discovery, DiscoveryHandle, DnsName, TtlBounds};
    use wsproxy::proxy::Rebalancer;
    use wsproxy::UpstreamGroup;

    /// How long start-up waits for each name's first answer: a gateway
    /// that prints its "listening" line with an empty group would answer
    /// 502 to its first clients.
    const FIRST_ANSWER: Duration = Duration::from_secs(5);

    /// The running discoveries; they stop when this is dropped.
    pub struct Discoveries(#[allow(dead_code)] Vec<DiscoveryHandle>);

    /// Starts a discovery for every DNS upstream of every group and waits
    /// (at most 5 s each) for their first answers.
    pub async fn start(
        args: &Args,
        groups: &[(UpstreamSet, UpstreamGroup)],
    ) -> std::io::Result<Discoveries> {
        let bounds = TtlBounds::new(args.resolve_min_ttl, args.resolve_max_ttl);
        let mut handles = Vec::new();
        for (group_name, list) in lists(args) {
            let Some((set, group)) = groups.iter().find(|(_, g)| g.name() == group_name) else {
                continue;
            };
            for template in &list {
                let Some((name, port)) = dns_name(template) else {
                    continue;
                };
                let name = match port {
                    Some(port) => DnsName::host(name, port),
                    None => DnsName::srv(name),
                };
                let mut discovery = Discovery::new(name.clone(), set.clone())
                    .template(template.clone())
                    .ttl_bounds(bounds);
                if let Some(addr) = args.resolver {
                    discovery = discovery.nameserver(addr);
                }
                if let Some(deadline) = args.resolve_drain_timeout {
                    discovery = discovery.close_after(group.clone(), deadline);
                }
                if let Some(rate) = args.rebalance_rate {
                    let planner = Rebalance::new(args.rebalance_factor).unwrap_or_default();
                    discovery = discovery.rebalance(
                        Rebalancer::new(group.clone(), set.clone())
                            .planner(planner)
                            .rate(rate),
                    );
                }
                let handle = discovery
                    .spawn()
                    .map_err(|e| std::io::Error::other(format!("dns {name}: {e}")))?;
                let first = tokio::time::timeout(FIRST_ANSWER, handle.wait_for(|s| s.lookups > 0));
                match first.await {
                    Ok(stats) if stats.members > 0 => eprintln!(
                        "gateway: dns {name}: {} upstreams for {group_name}",
                        stats.members
                    ),
                    _ => eprintln!(
                        "gateway: dns {name}: no address yet for {group_name}; retrying every {:?}",
                        bounds.retry()
                    ),
                }
                handles.push(handle);
            }
        }
        Ok(Discoveries(handles))
    }
}
