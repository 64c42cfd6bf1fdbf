//! Each group's background work: its health checker and rebalancer
//! (`--health-check`, `--rebalance-rate`) and its DNS discoveries
//! (dns.rs), started with the gateway and carried through reloads.
//!
//! A reload keeps a group's checker and rebalancer running when what they
//! are built from is unchanged (the check and rebalance settings, the
//! balancing and hash key, the group's transport and TLS flags), whatever
//! happened to its upstream list: the kept set is reconciled in place and
//! the checker follows it. So the checks' pass and fail counts, their
//! schedule and the upstreams they took out carry over, as nothing about
//! them changed (restarting them would probe every upstream at once and
//! count from zero). A group whose settings changed gets new tasks, whose
//! checker takes over the old one's marks; an added group gets its own; a
//! removed group's stop.
//!
//! DNS discoveries follow the same rule per name (see
//! [`Discoveries`](crate::dns::Discoveries)): new names start, and a group
//! the reload adds has its first answers before the swap, so that it
//! serves from its first request; names no longer listed stop and their
//! upstreams drain; unchanged ones run on untouched.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use wsproxy::balance::{Rebalance, UpstreamSet};
use wsproxy::proxy::Rebalancer;
use wsproxy::{HealthCheck, HealthChecker, UpstreamGroup};

use crate::cli::{Args, OnMarkedDown};
use crate::dns::Discoveries;
use crate::Groups;

/// Every group's tasks and discoveries; they stop when this is dropped.
pub struct Background {
    groups: Vec<GroupTasks>,
    dns: Discoveries,
}

/// One group's health checker and rebalancer, aborted when dropped: an
/// aborted checker leaves its marks, for the next one to take over.
struct GroupTasks {
    name: String,
    /// What the tasks were built from; a reload compares it.
    settings: String,
    tasks: Vec<JoinHandle<()>>,
    /// The set the checker marks, when there is one.
    checked: Option<UpstreamSet>,
}

impl Drop for GroupTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Background {
    /// Starts every group's discoveries (waiting at most 5 s for their
    /// first answers), then its checker and rebalancer.
    pub async fn start(
        args: &Args,
        health: Option<&HealthCheck>,
        groups: Groups,
    ) -> io::Result<Self> {
        let dns = Discoveries::start(args, &groups).await?;
        let groups = groups
            .into_iter()
            .map(|(set, group)| GroupTasks::start(args, health, set, group))
            .collect();
        Ok(Self { groups, dns })
    }

    /// Before a reload's swap: starts the discoveries of the groups it
    /// adds (`added`, the new configuration's own groups, which the swap
    /// puts in force as they are) and waits for their first answers. An
    /// `Err` refuses the reload; nothing was started then.
    pub async fn before_swap(&mut self, args: &Args, added: &Groups) -> Result<(), String> {
        self.dns.start_missing(args, added).await
    }

    /// After a reload's swap, over the groups now in force: starts the
    /// discoveries of new names in kept groups, retires those of names no
    /// longer listed (once the new ones have answered, so that a renamed
    /// upstream never leaves its group empty), and keeps, replaces, starts
    /// or stops each group's tasks. Returns the groups whose tasks were
    /// replaced.
    pub async fn after_swap(
        &mut self,
        args: &Args,
        health: Option<&HealthCheck>,
        in_force: Groups,
    ) -> Vec<String> {
        if let Err(msg) = self.dns.start_missing(args, &in_force).await {
            // Past the swap a reload cannot be refused; the next one tries
            // again, as the name is still not running.
            eprintln!("gateway: reload: {msg}");
        }
        self.dns.retire_unlisted(args);

        let wanted: Vec<(String, String)> = in_force
            .iter()
            .map(|(_, group)| (group.name().to_owned(), settings(args, group)))
            .collect();
        let (kept, gone): (Vec<GroupTasks>, Vec<GroupTasks>) = std::mem::take(&mut self.groups)
            .into_iter()
            .partition(|t| wanted.iter().any(|(n, s)| *n == t.name && *s == t.settings));
        let replaced: Vec<String> = gone
            .iter()
            .filter(|t| wanted.iter().any(|(n, _)| *n == t.name))
            .map(|t| t.name.clone())
            .collect();
        // With checks turned off no checker takes the marks over: lifted
        // here, as a checker that stops lifts its own, or the upstreams
        // they took out would stay out for good.
        let unchecked: Vec<UpstreamSet> = match health {
            Some(_) => Vec::new(),
            None => gone.iter().filter_map(|t| t.checked.clone()).collect(),
        };
        // Aborted before their successors start, so that two checkers
        // never mark the same set (the control runtime has one thread: an
        // aborted task never runs again).
        drop(gone);
        for set in unchecked {
            for peer in set.snapshot().iter().filter(|p| p.is_check_down()) {
                set.set_check_down(peer.id(), false);
            }
        }
        self.groups = kept;
        for (set, group) in in_force {
            if !self.groups.iter().any(|t| t.name == group.name()) {
                self.groups
                    .push(GroupTasks::start(args, health, set, group));
            }
        }
        replaced
    }
}

impl GroupTasks {
    /// Starts the group's health checker and rebalancer, as the flags ask.
    fn start(
        args: &Args,
        health: Option<&HealthCheck>,
        set: UpstreamSet,
        group: UpstreamGroup,
    ) -> Self {
        let mut tasks = Vec::new();
        let checked = health.map(|_| set.clone());
        let rebalance = args.rebalance_rate.map(|rate| {
            let wake = Arc::new(Notify::new());
            let planner = Rebalance::new(args.rebalance_factor).unwrap_or_default();
            let rebalancer = Rebalancer::new(group.clone(), set.clone())
                .planner(planner)
                .rate(rate);
            tasks.push(tokio::spawn(rebalance(
                rebalancer,
                args.rebalance_interval,
                wake.clone(),
            )));
            wake
        });
        if let Some(config) = health {
            let mut checker = HealthChecker::new(set, config.clone());
            checker = crate::upstream_tls::check(checker, &group);
            if args.on_marked_down == Some(OnMarkedDown::Close) {
                checker = checker.close_on_down(&group);
            }
            if let Some(wake) = rebalance {
                // An upstream that comes (back) up takes its share now.
                checker = checker.on_change(move |_, up| {
                    if up {
                        wake.notify_one();
                    }
                });
            }
            tasks.push(tokio::spawn(checker.run(std::future::pending())));
        }
        Self {
            name: group.name().to_owned(),
            settings: settings(args, &group),
            tasks,
            checked,
        }
    }
}

/// What a group's checker and rebalancer are built from: the check and
/// rebalance flags, the balancing the rebalancer plans with, and whether
/// the group's upstreams (and so its checks) go over TLS, and with what.
fn settings(args: &Args, group: &UpstreamGroup) -> String {
    #[cfg(feature = "rustls")]
    let tls = group.upstream_tls().is_some();
    #[cfg(not(feature = "rustls"))]
    let tls = {
        let _ = group;
        false
    };
    format!(
        "{:?}",
        (
            (
                &args.health_check,
                args.health_interval,
                args.health_rise,
                args.health_fall,
                args.on_marked_down,
            ),
            (
                args.rebalance_rate,
                args.rebalance_factor,
                args.rebalance_interval,
                args.balance,
                &args.hash_key,
            ),
            (
                tls,
                &args.upstream_ca,
                &args.upstream_sni,
                args.upstream_insecure,
                // The probes send a PROXY header when requests do.
                args.send_proxy_v2,
            ),
        )
    )
}

/// Rebalances one group every `every`, and when `wake` is notified, if its
/// most loaded upstream holds more than the factor allows.
async fn rebalance(rebalancer: Rebalancer, every: Duration, wake: Arc<Notify>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = wake.notified() => {}
        }
        let report = rebalancer.run().await;
        if report.moved > 0 {
            eprintln!(
                "gateway: rebalanced: max/mean {:.2} -> {:.2}, {} tunnels moved",
                report.before.ratio(),
                report.after.ratio(),
                report.moved
            );
        }
    }
}
