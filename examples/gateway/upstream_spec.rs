//! The gateway's upstream and route syntax: `--upstream ADDR[,opts]`
//! (`ip:port`, `host:port`, `tls://`, `unix:/PATH`, `dns:NAME:PORT`,
//! `srv:NAME`) and `--route [HOST]/PREFIX[>/REPLACE]=UPSTREAM,...`, parsed
//! into wsproxy's types for clap (cli.rs) and the config file (config.rs).

use std::net::SocketAddr;

use wsproxy::balance::{Upstream, UpstreamAddr};

use crate::cli::parse_duration;

/// One `--route`.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// As written left of `=`: the group's name in logs.
    pub name: String,
    /// None for any host.
    pub host: Option<String>,
    pub prefix: String,
    /// What replaces the prefix upstream, if anything.
    pub replace: Option<String>,
    pub upstreams: Vec<Upstream>,
    /// Whether its upstreams were written `tls://`.
    pub transport: Transport,
}

/// How an upstream is reached, as its address was written: `tls://` or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls,
}

/// The one transport of a group's upstreams: like nginx's `proxy_pass
/// https://group`, TLS is a property of the whole group.
pub fn one_transport(list: &[(Upstream, Transport)]) -> Result<(Vec<Upstream>, Transport), String> {
    let transport = list.first().map_or(Transport::Plain, |(_, t)| *t);
    if list.iter().any(|(_, t)| *t != transport) {
        return Err(
            "tls:// and plain upstreams cannot share a group; give them separate --route".into(),
        );
    }
    Ok((list.iter().map(|(u, _)| u.clone()).collect(), transport))
}

/// `ADDR[,weight=N][,max_fails=N][,fail_timeout=DUR][,backup][,down]`.
pub fn parse_upstream(text: &str) -> Result<(Upstream, Transport), String> {
    let list = parse_upstream_list(text)?;
    match <[(Upstream, Transport); 1]>::try_from(list) {
        Ok([one]) => Ok(one),
        Err(_) => Err(format!(
            "`{text}` names several upstreams; repeat --upstream for each"
        )),
    }
}

/// Upstreams separated by commas, each followed by its options.
fn parse_upstream_list(text: &str) -> Result<Vec<(Upstream, Transport)>, String> {
    let mut list: Vec<(Upstream, Transport)> = Vec::new();
    for token in text.split(',').map(str::trim) {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let is_option = matches!(
            key,
            "weight" | "max_fails" | "fail_timeout" | "backup" | "down"
        );
        if !is_option {
            // `dns:NAME:PORT` and `srv:NAME` (see dns.rs), else an address.
            if let Some(template) = parse_dns_upstream(token)? {
                list.push((template, Transport::Plain));
                continue;
            }
            let (addr, transport) = match token.strip_prefix("tls://") {
                Some(rest) => (rest, Transport::Tls),
                None => (token, Transport::Plain),
            };
            list.push((Upstream::new(parse_addr(addr)?), transport));
            continue;
        }
        let (last, transport) = list
            .pop()
            .ok_or_else(|| format!("`{token}` must follow an upstream address"))?;
        let number = || -> Result<u32, String> {
            value
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("`{token}`: {key} takes a whole number"))
        };
        let updated = match (key, value) {
            ("weight", _) => match number()? {
                0 => return Err("weight must be at least 1 (use `down` to stop traffic)".into()),
                n => last.weight(n),
            },
            ("max_fails", _) => last.max_fails(number()?),
            ("fail_timeout", Some(v)) => last.fail_timeout(parse_duration(v)?),
            ("backup", None) => last.backup(true),
            ("down", None) => last.down(true),
            _ => return Err(format!("`{token}`: {key} takes no value here")),
        };
        list.push((updated, transport));
    }
    if list.is_empty() {
        return Err("no upstream address".into());
    }
    Ok(list)
}

/// `dns:NAME:PORT` (A/AAAA records, every address with PORT; nginx `server
/// NAME:PORT resolve`) or `srv:NAME` (SRV records, e.g.
/// `srv:_ws._tcp.backend.svc`, with their ports and weights; HAProxy
/// `server-template` on an SRV name), kept current by the gateway's DNS
/// discovery (dns.rs). Carried as an upstream named `dns:NAME` (port PORT)
/// or `srv:NAME` (port 0) whose options (weight, max_fails, ...) every
/// discovered address gets. `None` for anything else.
pub fn parse_dns_upstream(token: &str) -> Result<Option<Upstream>, String> {
    let valid = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    if let Some(rest) = token.strip_prefix("dns:") {
        let bad = || format!("`{token}` is not dns:NAME:PORT (example: dns:backend.svc:8080)");
        let (name, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if !valid(name) || port == 0 {
            return Err(bad());
        }
        return Ok(Some(Upstream::new(UpstreamAddr::name(
            format!("dns:{name}"),
            port,
        ))));
    }
    if let Some(name) = token.strip_prefix("srv:") {
        if !valid(name) {
            return Err(format!(
                "`{token}` is not srv:NAME (example: srv:_ws._tcp.backend.svc)"
            ));
        }
        return Ok(Some(Upstream::new(UpstreamAddr::name(
            format!("srv:{name}"),
            0,
        ))));
    }
    Ok(None)
}

/// `ip:port`, `[v6]:port`, `host:port` or `unix:/PATH`.
fn parse_addr(text: &str) -> Result<UpstreamAddr, String> {
    if text.starts_with("unix:") {
        return text
            .parse()
            .map_err(|e: wsproxy::balance::AddrParseError| e.to_string());
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr.into());
    }
    let bad = || format!("`{text}` is not an upstream address (ip:port or host:port)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok {
        return Err(bad());
    }
    Ok(UpstreamAddr::name(host, port))
}

/// `[HOST]/PREFIX=UPSTREAM[,opts],UPSTREAM...`.
pub fn parse_route(text: &str) -> Result<RouteSpec, String> {
    let (pattern, upstreams) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not HOST/PREFIX=UPSTREAM,..."))?;
    let slash = pattern
        .find('/')
        .ok_or_else(|| format!("`{pattern}`: the path prefix must start with `/`"))?;
    let host = &pattern[..slash];
    let (prefix, replace) = match pattern[slash..].split_once('>') {
        Some((_, with)) if !with.starts_with('/') => {
            return Err(format!(
                "`{pattern}`: the replacement after `>` must start with `/`"
            ))
        }
        Some((prefix, with)) => (prefix, Some(with.to_owned())),
        None => (&pattern[slash..], None),
    };
    let (upstreams, transport) = one_transport(&parse_upstream_list(upstreams)?)?;
    Ok(RouteSpec {
        name: pattern.to_owned(),
        host: (!host.is_empty()).then(|| host.to_owned()),
        prefix: prefix.to_owned(),
        replace,
        upstreams,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn upstream_options_attach_to_the_address_before_them() {
        let list = parse_upstream_list(
            "127.0.0.1:8010,127.0.0.1:8011,weight=3,max_fails=2,fail_timeout=5s,backup,localhost:9000,down",
        )
        .unwrap();
        let mut expected = vec![
            Upstream::new("127.0.0.1:8010".parse::<SocketAddr>().unwrap()),
            Upstream::new("127.0.0.1:8011".parse::<SocketAddr>().unwrap())
                .weight(3)
                .max_fails(2)
                .fail_timeout(Duration::from_secs(5))
                .backup(true),
            Upstream::new(UpstreamAddr::name("localhost", 9000)).down(true),
        ];
        let plain: Vec<_> = list.iter().map(|(_, t)| *t).collect();
        assert_eq!(plain, [Transport::Plain; 3]);
        let list: Vec<_> = list.into_iter().map(|(u, _)| u).collect();
        assert_eq!(list, expected);
        expected.truncate(1);
        assert!(parse_upstream("127.0.0.1:8010,127.0.0.1:8011").is_err());
        for bad in [
            "weight=3",
            "127.0.0.1:1,weight=0",
            "127.0.0.1:1,weight=x",
            "nope",
            "a b:1",
            "127.0.0.1:1,backup=1",
        ] {
            assert!(parse_upstream_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_upstreams_carry_their_name_and_options() {
        let list: Vec<Upstream> = parse_upstream_list(
            "dns:chat.svc:8080,weight=2,127.0.0.1:1,srv:_ws._tcp.chat.svc,max_fails=3",
        )
        .unwrap()
        .into_iter()
        .map(|(upstream, _)| upstream)
        .collect();
        assert_eq!(
            list,
            vec![
                Upstream::new(UpstreamAddr::name("dns:chat.svc", 8080)).weight(2),
                Upstream::new("127.0.0.1:1".parse::<SocketAddr>().unwrap()),
                Upstream::new(UpstreamAddr::name("srv:_ws._tcp.chat.svc", 0)).max_fails(3),
            ]
        );
        for bad in [
            "dns:chat.svc",
            "dns:chat.svc:0",
            "dns::80",
            "dns:a b:80",
            "srv:",
            "srv:a/b",
        ] {
            assert!(parse_upstream_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tls_and_unix_upstreams_parse_and_do_not_mix() {
        let (tls, transport) = parse_upstream("tls://backend.test:443,weight=2").unwrap();
        assert_eq!(
            (tls.addr(), transport),
            (&UpstreamAddr::name("backend.test", 443), Transport::Tls)
        );
        let (unix, transport) = parse_upstream("unix:/run/app.sock,max_fails=2").unwrap();
        assert_eq!(
            (unix.addr(), transport),
            (&UpstreamAddr::unix("/run/app.sock"), Transport::Plain)
        );
        let route = parse_route("/=tls://a.test:443,tls://unix:/run/tls.sock").unwrap();
        assert_eq!(
            (route.upstreams.len(), route.transport),
            (2, Transport::Tls)
        );
        assert!(parse_route("/=tls://a.test:443,127.0.0.1:80").is_err());
        for bad in ["unix:", "tls://", "tls://nope"] {
            assert!(parse_upstream(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn routes_split_host_prefix_and_upstreams() {
        let r = parse_route("chat.example/ws/=127.0.0.1:1,127.0.0.1:2,weight=2").unwrap();
        assert_eq!(r.host.as_deref(), Some("chat.example"));
        assert_eq!(r.prefix, "/ws/");
        assert_eq!(r.upstreams.len(), 2);
        let r = parse_route("/api=127.0.0.1:1").unwrap();
        assert_eq!((r.host, r.prefix.as_str()), (None, "/api"));
        assert!(parse_route("chat.example=127.0.0.1:1").is_err());
        assert!(parse_route("/x").is_err());
        let r = parse_route("/chat/>/=127.0.0.1:1").unwrap();
        assert_eq!(
            (r.prefix.as_str(), r.replace.as_deref()),
            ("/chat/", Some("/"))
        );
        let r = parse_route("a.test/v1/>/v2/=127.0.0.1:1").unwrap();
        assert_eq!(
            (r.prefix.as_str(), r.replace.as_deref()),
            ("/v1/", Some("/v2/"))
        );
        assert!(parse_route("/chat/>x=127.0.0.1:1").is_err());
    }
}
