//! `--config FILE` and `--check-config FILE`: the flags, said in TOML.
//!
//! Every key is a flag's long name, with `-` or `_` (`read-timeout = "2h"`
//! is `--read-timeout 2h`); a list repeats the flag (`upstream = ["a", "b"]`),
//! `true` gives a switch (`proxy-protocol = true`), numbers are written as
//! numbers or strings. A table groups flags that share a word, before or
//! after the key: `[timeouts] read = "2h"` is `--read-timeout`, `[health]
//! check = "tcp"` is `--health-check`, `[tls] cert = "…"` is `--tls-cert`.
//! So a flag added to [`Args`] can be said in the file with no change here.
//! Routes are tables of their own:
//!
//! ```toml
//! [[route]]
//! host = "chat.example.com"    # optional (nginx server_name)
//! prefix = "/ws/"              # nginx location
//! replace = "/"                # optional: proxy_pass http://group/;
//! upstreams = ["127.0.0.1:8010,weight=3", "127.0.0.1:8011"]
//! ```
//!
//! Upstream strings, flag values and routes go through the very parsers the
//! flags use, and the whole file through the checks the gateway runs before
//! it binds anything (the same `build_proxy`, health-check, drain and TLS
//! code), so a file that `--check-config` accepts starts, and one it refuses
//! would have been refused at start or reload. Each error carries the line
//! and column of the key or value at fault: toml's spans for syntax and
//! types (its recovering parser goes on after the first syntax error), the
//! spans kept beside each value for the rest.
//!
//! Paths (certificates, the access log) are read relative to the working
//! directory, as the flags' are.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::cli::Args;

/// Flags that say where the configuration comes from, not what it is.
const NOT_IN_FILE: &[&str] = &["config", "check-config", "watch-config", "help", "version"];

/// One error in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// From 1; 0 when the file could not be read.
    pub line: usize,
    /// From 1, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Reads and checks `path`: the settings it holds, or every error found.
pub fn load(path: &Path) -> Result<Args, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            line: 0,
            column: 0,
            message: format!("cannot read {}: {e}", path.display()),
        }]
    })?;
    let mut check = Check::new(&text);
    let args = check.run();
    match args {
        Some(args) if check.errors.is_empty() => Ok(args),
        _ => Err(check.diagnostics()),
    }
}

/// `--check-config FILE`: nginx `-t`'s two lines, or every error; 0 when
/// the file is valid, 2 otherwise.
pub fn check(path: &Path) -> ExitCode {
    let shown = path.display();
    match load(path) {
        Ok(_) => {
            println!("gateway: configuration file {shown} syntax is ok");
            println!("gateway: configuration file {shown} test is successful");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(path, &errors);
            eprintln!(
                "gateway: configuration file {shown} test failed: {} error(s)",
                errors.len()
            );
            ExitCode::from(2)
        }
    }
}

/// Prints each error as `gateway: FILE:LINE:COLUMN: message`.
pub fn report(path: &Path, errors: &[Diagnostic]) {
    for e in errors {
        eprintln!(
            "gateway: {}:{}:{}: {}",
            path.display(),
            e.line,
            e.column,
            e.message
        );
    }
}

/// The other flags given with `--config`: a usage error, since a reload
/// re-reads only the file and could not say which of two values holds.
pub fn flags_beside_config(matches: &clap::ArgMatches) -> Vec<String> {
    let command = Args::command();
    matches
        .ids()
        // Arguments only: the derive also adds a group named `Args`.
        .filter(|id| command.get_arguments().any(|a| a.get_id() == *id))
        .filter(|id| {
            matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|id| id.as_str().replace('_', "-"))
        .filter(|name| name != "config" && name != "watch-config")
        .map(|name| format!("--{name}"))
        .collect()
}

/// One pass over a file: the command line it stands for, and the errors.
struct Check<'a> {
    text: &'a str,
    command: clap::Command,
    /// `gateway --flag=value ...`, as the file says it.
    argv: Vec<String>,
    /// Each flag set, with the span of its key, for errors found later.
    keys: Vec<(String, Range<usize>)>,
    /// Each route's host and prefix, for duplicates.
    routes: Vec<(String, String, Range<usize>)>,
    errors: Vec<(Range<usize>, String)>,
}

impl<'a> Check<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            command: Args::command(),
            argv: vec!["gateway".to_owned()],
            keys: Vec::new(),
            routes: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push((span, message.into()));
    }

    fn run(&mut self) -> Option<Args> {
        let (table, syntax) = DeTable::parse_recoverable(self.text);
        for e in syntax {
            self.error(e.span().unwrap_or(0..0), e.message().trim().to_owned());
        }
        for (key, value) in table.get_ref() {
            let name = key.get_ref().replace('_', "-");
            match (name.as_str(), value.get_ref()) {
                ("route", DeValue::Array(routes)) => {
                    for route in routes {
                        self.route(route);
                    }
                }
                ("route", _) => {
                    self.error(key.span(), "`route` is a list of tables: write [[route]]")
                }
                (_, DeValue::Table(section)) => {
                    for (key, value) in section {
                        self.setting(Some(&name), key, value);
                    }
                }
                _ => self.setting(None, key, value),
            }
        }
        // Values found wrong were left out of `argv`: the rest is checked
        // as a whole too, so that one run reports every error it can.
        let found = self.errors.len();
        let routed = self
            .keys
            .iter()
            .any(|(k, _)| k == "upstream" || k == "route");
        if !routed && found == 0 {
            self.error(
                0..0,
                "nothing to proxy to: set `upstream` or add a [[route]]",
            );
        }
        let matches = match self.command.clone().try_get_matches_from(&self.argv) {
            Ok(matches) => matches,
            // Likely a flag that needs one found wrong: said already.
            Err(_) if found > 0 => return None,
            Err(e) => {
                let message = clap_message(&e);
                let span = self.span_named_in(&message);
                self.error(span, message);
                return None;
            }
        };
        if !routed {
            return None;
        }
        match Args::from_arg_matches(&matches) {
            Ok(args) => {
                self.semantics(&args, found == 0);
                Some(args)
            }
            Err(e) => {
                self.error(0..0, clap_message(&e));
                None
            }
        }
    }

    /// One `key = value`, under a table named `section` if any.
    fn setting(
        &mut self,
        section: Option<&str>,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) {
        let raw = key.get_ref().replace('_', "-");
        let candidates = match section {
            None => vec![raw.clone()],
            // `[timeouts] read` is --read-timeout: the section's name may
            // be plural.
            Some(s) => {
                let one = s.strip_suffix('s').unwrap_or(s);
                vec![
                    format!("{s}-{raw}"),
                    format!("{raw}-{s}"),
                    format!("{one}-{raw}"),
                    format!("{raw}-{one}"),
                ]
            }
        };
        let arg = candidates.iter().find_map(|name| {
            self.command
                .get_arguments()
                .find(|a| a.get_long() == Some(name.as_str()))
                .cloned()
        });
        let Some(arg) = arg.filter(|a| !NOT_IN_FILE.contains(&a.get_long().unwrap_or(""))) else {
            let top_level = self
                .command
                .get_arguments()
                .any(|a| a.get_long() == Some(&raw));
            let message = match section {
                // TOML puts every key after `[section]` in that section.
                Some(s) if top_level => format!(
                    "`{raw}` is not a setting of [{s}]; as a top-level key it goes above the first [table]"
                ),
                Some(s) => format!("unknown setting `{raw}` in [{s}]"),
                None => format!("unknown setting `{raw}` (the keys are the flags of `gateway --help`)"),
            };
            self.error(key.span(), message);
            return;
        };
        let long = arg.get_long().unwrap_or_default().to_owned();
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let optional_value = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
        let many = matches!(arg.get_action(), ArgAction::Append);
        let items: Vec<&Spanned<DeValue<'_>>> = match value.get_ref() {
            DeValue::Array(list) if many => list.iter().collect(),
            DeValue::Array(_) => {
                self.error(
                    value.span(),
                    format!("`{long}` takes one value, not a list"),
                );
                return;
            }
            _ => vec![value],
        };
        self.keys.push((long.clone(), key.span()));
        for item in items {
            let text = match item.get_ref() {
                DeValue::Boolean(on) if switch || optional_value => {
                    if *on {
                        self.argv.push(format!("--{long}"));
                    }
                    continue;
                }
                _ if switch => {
                    self.error(item.span(), format!("`{long}` is true or false"));
                    continue;
                }
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(n) => n.to_string(),
                DeValue::Float(n) => n.to_string(),
                other => {
                    self.error(
                        item.span(),
                        format!(
                            "`{long}` takes a string or a number, not a {}",
                            other.type_str()
                        ),
                    );
                    continue;
                }
            };
            self.value(&long, item.span(), text);
        }
    }

    /// Checks one value with the flag's own parser, then keeps it.
    fn value(&mut self, long: &str, span: Range<usize>, text: String) {
        let flag = format!("--{long}={text}");
        match self
            .command
            .clone()
            .try_get_matches_from(["gateway", &flag])
        {
            // Another flag it needs is checked with the whole file.
            Err(e) if e.kind() != ErrorKind::MissingRequiredArgument => {
                self.error(span, clap_message(&e));
            }
            _ => match address_list_error(long, &text) {
                Some(message) => self.error(span, message),
                None => self.argv.push(flag),
            },
        }
    }

    /// One `[[route]]`: checked piece by piece, then said as a `--route`.
    fn route(&mut self, route: &Spanned<DeValue<'_>>) {
        let DeValue::Table(table) = route.get_ref() else {
            self.error(route.span(), "each `route` is a table: write [[route]]");
            return;
        };
        let errors = self.errors.len();
        let mut host = String::new();
        let mut prefix: Option<(String, Range<usize>)> = None;
        let mut replace = None;
        let mut upstreams = Vec::new();
        for (key, value) in table {
            let text = value.get_ref().as_str();
            match (key.get_ref().as_ref(), text) {
                ("host", Some(h)) => match wsproxy::route::HostPattern::parse(h) {
                    Ok(_) => host = h.to_owned(),
                    Err(e) => self.error(value.span(), format!("route host `{h}`: {e}")),
                },
                ("prefix" | "replace", Some(p)) if !p.starts_with('/') => {
                    self.error(value.span(), format!("`{p}` must start with `/`"));
                }
                ("prefix", Some(p)) => prefix = Some((p.to_owned(), value.span())),
                ("replace", Some(p)) => replace = Some(p.to_owned()),
                ("upstreams", _) => match value.get_ref() {
                    DeValue::Array(list) if !list.is_empty() => {
                        for item in list {
                            match item
                                .get_ref()
                                .as_str()
                                .map(crate::upstream_spec::parse_upstream)
                            {
                                Some(Ok(_)) => {
                                    upstreams.push(item.get_ref().as_str().unwrap_or_default())
                                }
                                Some(Err(e)) => self.error(item.span(), e),
                                None => self.error(item.span(), "an upstream is a string"),
                            }
                        }
                    }
                    _ => self.error(
                        value.span(),
                        "`upstreams` is a list of one or more upstreams",
                    ),
                },
                ("host" | "prefix" | "replace", None) => {
                    self.error(value.span(), format!("`{}` is a string", key.get_ref()));
                }
                (other, _) => self.error(
                    key.span(),
                    format!("unknown route setting `{other}` (host, prefix, replace, upstreams)"),
                ),
            }
        }
        let Some((prefix, prefix_span)) = prefix else {
            self.error(
                route.span(),
                "a route needs a `prefix` (\"/\" for every path)",
            );
            return;
        };
        if upstreams.is_empty() && self.errors.len() == errors {
            self.error(route.span(), "a route needs `upstreams`");
        }
        if let Some((_, _, first)) = self
            .routes
            .iter()
            .find(|(h, p, _)| h.eq_ignore_ascii_case(&host) && *p == prefix)
        {
            let (line, _) = position(self.text, first.start);
            let shown = format!("{host}{prefix}");
            self.error(
                prefix_span.clone(),
                format!("duplicate route `{shown}`: the route on line {line} has the same host and prefix"),
            );
        }
        self.routes
            .push((host.clone(), prefix.clone(), prefix_span));
        if self.errors.len() > errors {
            return;
        }
        let replace = replace.map(|r| format!(">{r}")).unwrap_or_default();
        let spec = format!("{host}{prefix}{replace}={}", upstreams.join(","));
        self.keys.push(("route".to_owned(), route.span()));
        self.argv.push(format!("--route={spec}"));
    }

    /// What the gateway checks before it binds anything, each error at the
    /// key it comes from.
    /// `whole`: no value was left out, so that the routes can be built.
    fn semantics(&mut self, args: &Args, whole: bool) {
        if !whole {
            return self.checks_beside_routes(args);
        }
        if let Err(msg) = crate::build_proxy(args, None) {
            let span = self.span_named_in(&msg);
            let span = if span == (0..0) {
                self.span_of(&["route", "upstream", "balance"])
            } else {
                span
            };
            self.error(span, msg);
        }
        self.checks_beside_routes(args);
    }

    fn checks_beside_routes(&mut self, args: &Args) {
        if let Err(msg) = crate::health_config(args) {
            let span = self.span_of(&["health-check"]);
            self.error(span, msg);
        }
        if let Err(msg) = crate::drain_timeout(args) {
            let span = self.span_of(&["drain-timeout", "drain-window"]);
            self.error(span, msg);
        }
        if let Err(msg) = crate::proxy_protocol(args) {
            let span = self.span_of(&["proxy-protocol", "send-proxy-v2"]);
            self.error(span, msg);
        }
        if let Err(msg) = crate::dns::check(args) {
            let span = self.span_of(&["resolve-min-ttl", "resolve-max-ttl", "upstream"]);
            self.error(span, msg);
        }
        // As `nginx -t` opens its log files: a path the gateway could not
        // open at start fails the check too.
        if let Some(path) = args
            .access_log
            .as_deref()
            .filter(|p| *p != std::path::Path::new("-"))
        {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            if let Err(e) = opened {
                let span = self.span_of(&["access-log"]);
                self.error(span, format!("cannot open {}: {e}", path.display()));
            }
        }
        #[cfg(not(feature = "metrics"))]
        if args.metrics.is_some() {
            let span = self.span_of(&["metrics"]);
            self.error(
                span,
                "`metrics` needs the gateway built with `--features metrics`",
            );
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let mut readable = true;
            for (path, name) in [(cert, "tls-cert"), (key, "tls-key")] {
                if let Err(e) = std::fs::metadata(path) {
                    let span = self.span_of(&[name]);
                    self.error(span, format!("cannot read {}: {e}", path.display()));
                    readable = false;
                }
            }
            if readable {
                if let Err(msg) = crate::tls::acceptor(cert, key, false) {
                    let span = self.span_of(&["tls-cert"]);
                    self.error(span, msg);
                }
            }
        }
    }

    /// The span of the first of `names` the file sets; the file's start
    /// when none.
    fn span_of(&self, names: &[&str]) -> Range<usize> {
        names
            .iter()
            .find_map(|name| self.keys.iter().find(|(k, _)| k == name))
            .map_or(0..0, |(_, span)| span.clone())
    }

    /// The span of the key whose flag (`--name`) a message names.
    fn span_named_in(&self, message: &str) -> Range<usize> {
        self.keys
            .iter()
            .find(|(k, _)| {
                message.contains(&format!("--{k} "))
                    || message.contains(&format!("--{k}'"))
                    || message.contains(&format!("--{k}`"))
                    || message.contains(&format!("--{k}:"))
            })
            .map_or(0..0, |(_, span)| span.clone())
    }

    /// Every error, with its line and column, in file order.
    fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut list: Vec<Diagnostic> = self
            .errors
            .iter()
            .map(|(span, message)| {
                let (line, column) = position(self.text, span.start);
                Diagnostic {
                    line,
                    column,
                    message: message.clone(),
                }
            })
            .collect();
        list.sort_by_key(|d| (d.line, d.column));
        list
    }
}

/// Trusted addresses are checked by the policy that uses them, once the
/// whole file parses; checked here, each bad one names its own line.
fn address_list_error(long: &str, text: &str) -> Option<String> {
    if !matches!(long, "trusted-proxy" | "proxy-protocol-from") {
        return None;
    }
    let policy = wsproxy::forward::ForwardPolicy::builder().trusted_proxy(text.to_owned());
    policy
        .build()
        .err()
        .map(|e| format!("`{long}`: {}", crate::with_source(&e)))
}

/// The line and column (from 1, in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    (line, column)
}

/// clap's message without its `error: ` lead, usage and help lines: the
/// first paragraph (with the possible values, when clap lists them).
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = lines.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Args, Vec<Diagnostic>> {
        let mut check = Check::new(text);
        match check.run() {
            Some(args) if check.errors.is_empty() => Ok(args),
            _ => Err(check.diagnostics()),
        }
    }

    #[test]
    fn keys_sections_and_routes_become_flags() {
        let args = check(
            r#"
listen = "127.0.0.1:0"
upstream = ["127.0.0.1:8010,weight=3", "127.0.0.1:8011"]
balance = "least-conn"
proxy_redirect = "off"
[timeouts]
read = "2h"
connect = 2
[[route]]
host = "chat.example"
prefix = "/ws/"
replace = "/"
upstreams = ["127.0.0.1:9000"]
"#,
        );
        let args = match args {
            Ok(args) => args,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(args.upstream.len(), 2);
        assert_eq!(args.read_timeout, std::time::Duration::from_secs(7_200));
        assert_eq!(args.connect_timeout, std::time::Duration::from_secs(2));
        assert_eq!(args.balance, crate::cli::Balance::LeastConn);
        let route = &args.route[0];
        assert_eq!(
            (
                route.host.as_deref(),
                route.prefix.as_str(),
                route.replace.as_deref()
            ),
            (Some("chat.example"), "/ws/", Some("/"))
        );
    }

    #[test]
    fn every_error_has_its_line() {
        let errors = check(
            r#"upstream = ["127.0.0.1:8010"]
trusted-proxy = ["10.0.0.0/33"]
balance = "fastest"
[[route]]
prefix = "/a"
upstreams = ["nope"]
[[route]]
prefix = "/a"
upstreams = ["127.0.0.1:1"]
colour = "blue"
"#,
        )
        .unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 6, 8, 10], "{errors:#?}");
    }
}
