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
//!
//! A reload (background.rs) starts the discoveries of names it adds, stops
//! those of names it drops (their addresses drain as if DNS had dropped
//! them), and leaves the others running untouched: no new lookup, the same
//! upstreams. A changed upstream string (its options) or a changed
//! `--resolver`/`--resolve-*` setting is a new discovery in place of the
//! old one.

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

/// Carries the addresses DNS discovered into a reload's new sets: the
/// discoveries keep running over the kept sets (a reload reconciles a
/// kept group's set against the new list, which would otherwise drain
/// every address that came from DNS and leave the group empty until the
/// next answer). Those of a discovery the reload stops are carried too:
/// stopping it drains them.
pub fn carry(old: &wsproxy::Proxy, old_args: &Args, new_args: &Args, new: &crate::Groups) {
    let old_lists = lists(old_args);
    for (name, list) in lists(new_args) {
        if !list.iter().any(|u| dns_name(u).is_some()) {
            continue;
        }
        let Some((set, _)) = new.iter().find(|(_, g)| g.name() == name) else {
            continue;
        };
        let Some(old_set) = old
            .groups()
            .into_iter()
            .find(|g| g.name() == name)
            .and_then(|g| g.upstreams().cloned())
        else {
            continue;
        };
        let listed: Vec<&UpstreamAddr> = old_lists
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, l)| l.iter().map(Upstream::addr))
            .collect();
        for upstream in old_set.upstreams() {
            if !listed.contains(&upstream.addr()) {
                set.add(upstream);
            }
        }
    }
}

#[cfg(feature = "dns")]
pub use with_feature::Discoveries;

#[cfg(not(feature = "dns"))]
pub use without_feature::Discoveries;

#[cfg(not(feature = "dns"))]
mod without_feature {
    use super::Args;
    use crate::Groups;

    /// Nothing runs without the feature: [`check`](super::check) refused
    /// every DNS upstream, at start and at each reload.
    pub struct Discoveries;

    impl Discoveries {
        pub async fn start(_args: &Args, _groups: &Groups) -> std::io::Result<Self> {
            Ok(Self)
        }

        pub async fn start_missing(
            &mut self,
            _args: &Args,
            _groups: &Groups,
        ) -> Result<(), String> {
            Ok(())
        }

        pub fn retire_unlisted(&mut self, _args: &Args) {}
    }
}

#[cfg(feature = "dns")]
mod with_feature {
    use std::time::Duration;

    use super::{dns_name, lists, Args};
    use crate::Groups;
    use wsproxy::balance::{Rebalance, Upstream, UpstreamSet};
    use wsproxy::dns::{Discovery, DiscoveryHandle, DnsName, TtlBounds};
    use wsproxy::proxy::Rebalancer;
    use wsproxy::UpstreamGroup;

    /// How long start-up waits for the first answers: a gateway that
    /// prints its "listening" line with an empty group would answer 502 to
    /// its first clients. A reload waits as long before it puts a group
    /// it adds in force, and before it stops a name that was replaced.
    const FIRST_ANSWER: Duration = Duration::from_secs(5);

    /// One discovery a configuration asks for: a DNS upstream of a group,
    /// with the settings it runs with. Two equal keys are the same
    /// discovery, which a reload keeps running.
    #[derive(Debug, Clone, PartialEq)]
    struct Key {
        group: String,
        /// The upstream as written, options (the template) included.
        template: String,
        /// The flags a discovery is built from.
        settings: String,
    }

    struct Running {
        key: Key,
        name: DnsName,
        handle: DiscoveryHandle,
    }

    /// The running discoveries; they stop when this is dropped.
    pub struct Discoveries(Vec<Running>);

    /// Every discovery `args` asks for, with what it resolves and the
    /// template its addresses get.
    fn wanted(args: &Args) -> Vec<(Key, DnsName, Upstream)> {
        // The rebalancer plans with the group's balancer, which it holds.
        let rebalance = args.rebalance_rate.map(|rate| {
            (
                rate,
                args.rebalance_factor,
                args.balance,
                args.hash_key.clone(),
            )
        });
        let settings = format!(
            "{:?}",
            (
                args.resolver,
                args.resolve_min_ttl,
                args.resolve_max_ttl,
                args.resolve_drain_timeout,
                rebalance,
            )
        );
        let mut wanted = Vec::new();
        for (group, list) in lists(args) {
            for template in list {
                let Some((name, port)) = dns_name(&template) else {
                    continue;
                };
                let name = match port {
                    Some(port) => DnsName::host(name, port),
                    None => DnsName::srv(name),
                };
                let key = Key {
                    group: group.to_owned(),
                    template: format!("{template:?}"),
                    settings: settings.clone(),
                };
                wanted.push((key, name, template));
            }
        }
        wanted
    }

    impl Discoveries {
        /// Starts a discovery for every DNS upstream of every group and
        /// waits (5 s at most in all) for their first answers.
        pub async fn start(args: &Args, groups: &Groups) -> std::io::Result<Self> {
            let mut started = Self(Vec::new());
            started
                .start_missing(args, groups)
                .await
                .map_err(std::io::Error::other)?;
            Ok(started)
        }

        /// Starts the discoveries `args` asks for in `groups` that do not
        /// run yet, and waits (5 s at most in all) for their first answers.
        /// On an `Err` none of them is left running.
        pub async fn start_missing(&mut self, args: &Args, groups: &Groups) -> Result<(), String> {
            let bounds = TtlBounds::new(args.resolve_min_ttl, args.resolve_max_ttl);
            let mut started: Vec<Running> = Vec::new();
            for (key, name, template) in wanted(args) {
                if self.0.iter().chain(&started).any(|r| r.key == key) {
                    continue;
                }
                let Some((set, group)) = groups.iter().find(|(_, g)| g.name() == key.group) else {
                    continue;
                };
                match discovery(args, bounds, &name, template, set, group).spawn() {
                    Ok(handle) => started.push(Running { key, name, handle }),
                    Err(e) => {
                        // Whatever the others added drains again.
                        for running in started {
                            drop(running.handle.retire());
                        }
                        return Err(format!("dns {name}: {e}"));
                    }
                }
            }
            // All started before any is waited for: they resolve at once.
            let deadline = tokio::time::Instant::now() + FIRST_ANSWER;
            for Running { key, name, handle } in &started {
                let first = handle.wait_for(|s| s.lookups > 0);
                match tokio::time::timeout_at(deadline, first).await {
                    Ok(stats) if stats.members > 0 => eprintln!(
                        "gateway: dns {name}: {} upstreams for {}",
                        stats.members, key.group
                    ),
                    _ => eprintln!(
                        "gateway: dns {name}: no address yet for {}; retrying every {:?}",
                        key.group,
                        bounds.retry()
                    ),
                }
            }
            self.0.extend(started);
            Ok(())
        }

        /// Stops the discoveries `args` no longer asks for: their
        /// upstreams drain as if DNS had dropped them (no new picks, their
        /// tunnels run on, `--resolve-drain-timeout` applies).
        pub fn retire_unlisted(&mut self, args: &Args) {
            let wanted: Vec<Key> = wanted(args).into_iter().map(|(key, _, _)| key).collect();
            let (mut kept, gone): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.0)
                .into_iter()
                .partition(|r| wanted.contains(&r.key));
            // A replaced name (its group still lists DNS upstreams) drains
            // only once one of the group's discoveries has addresses: a
            // successor that failed to start or has not answered yet would
            // leave the group with none. The next reload looks again.
            let serving: Vec<String> = kept
                .iter()
                .filter(|r| r.handle.stats().members > 0)
                .map(|r| r.key.group.clone())
                .collect();
            let mut waiting = Vec::new();
            for running in gone {
                let group = &running.key.group;
                if wanted.iter().any(|k| k.group == *group) && !serving.contains(group) {
                    eprintln!(
                        "gateway: reload: dns {} of {group} runs on until the names replacing it have addresses",
                        running.name
                    );
                    waiting.push(running);
                    continue;
                }
                let Running { key, name, handle } = running;
                eprintln!(
                    "gateway: reload: dns {name} of {} stopped; its {} upstreams drain",
                    key.group,
                    handle.stats().members
                );
                // The task drains them and ends by itself.
                drop(handle.retire());
            }
            kept.extend(waiting);
            self.0 = kept;
        }
    }

    /// The discovery of `name` into `set`, as the flags configure it.
    fn discovery(
        args: &Args,
        bounds: TtlBounds,
        name: &DnsName,
        template: Upstream,
        set: &UpstreamSet,
        group: &UpstreamGroup,
    ) -> Discovery {
        let mut discovery = Discovery::new(name.clone(), set.clone())
            .template(template)
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
        discovery
    }
}
