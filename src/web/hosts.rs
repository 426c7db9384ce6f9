//! The guard against DNS rebinding: a web page on `evil.example` whose name the attacker
//! re-points at 127.0.0.1 reaches a loopback server from the victim's browser, but its
//! requests still say `Host: evil.example`. So a server listening on loopback answers only
//! requests addressed to a loopback name (`localhost`, `127.0.0.1`, `[::1]`, any port) and the
//! names `--allowed-hosts` adds; anything else gets 421 saying which host was refused and how
//! to allow it.
//!
//! Listening beyond loopback, the names the server is reached by are not known, so every
//! host is accepted unless `--allowed-hosts` lists them (IP addresses are then accepted too:
//! rebinding needs a name). `--allowed-hosts '*'` accepts every host.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::{ApiError, ErrorKind};
use super::refusal::refuse;
use super::state::AppState;

/// Which `Host` headers the server answers.
#[derive(Clone, Debug, PartialEq)]
pub enum AllowedHosts {
    /// Every host.
    Any,
    /// Only these names (lower case) and IP addresses: loopback ones only, or all.
    Only {
        names: Vec<String>,
        loopback_ips_only: bool,
    },
}

impl Default for AllowedHosts {
    /// What a loopback server answers: loopback names only.
    fn default() -> Self {
        Self::for_bind(IpAddr::from([127, 0, 0, 1]), &[])
    }
}

impl AllowedHosts {
    /// The rule for a server listening on `bind` with `--allowed-hosts extra`.
    pub fn for_bind(bind: IpAddr, extra: &[String]) -> Self {
        let extra: Vec<String> = extra
            .iter()
            .map(|name| normalise(name))
            .filter(|name| !name.is_empty())
            .collect();
        if extra.iter().any(|name| name == "*") || (!bind.is_loopback() && extra.is_empty()) {
            return Self::Any;
        }
        let mut names = vec!["localhost".to_owned()];
        names.extend(extra);
        Self::Only {
            names,
            loopback_ips_only: bind.is_loopback(),
        }
    }

    /// Whether a request with this `Host` value (name or address, port or not) is answered.
    pub fn allows(&self, host: &str) -> bool {
        let Self::Only {
            names,
            loopback_ips_only,
        } = self
        else {
            return true;
        };
        let name = normalise(strip_port(host));
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => !loopback_ips_only || ip.is_loopback(),
            Err(_) => names.contains(&name),
        }
    }

    /// The names answered, for the refusal's message.
    fn described(&self) -> String {
        match self {
            Self::Any => "any host".into(),
            Self::Only {
                names,
                loopback_ips_only,
            } => {
                let ips = if *loopback_ips_only {
                    "127.0.0.1, [::1]"
                } else {
                    "its IP addresses"
                };
                format!("{}, {ips}", names.join(", "))
            }
        }
    }
}

/// Lower case without a trailing dot (`LocalHost.` is `localhost`).
fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `host` without its `:port`; an IPv6 address keeps its brackets.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Answers only requests addressed to an allowed host. A request without any `Host` (an
/// HTTP/1.0 client, a test calling the router directly) is let through: browsers, the only
/// way a rebinding attack arrives, always send one.
pub async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let host = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok().map(str::to_owned),
        None => match request.uri().authority() {
            Some(authority) => Some(authority.as_str().to_owned()),
            None => return next.run(request).await,
        },
    };
    let allowed = state.allowed_hosts();
    if host.as_deref().is_some_and(|host| allowed.allows(host)) {
        return next.run(request).await;
    }
    let shown = host.unwrap_or_else(|| "(not text)".into());
    let error = ApiError {
        status: StatusCode::MISDIRECTED_REQUEST,
        kind: ErrorKind::InvalidRequest,
        message: format!(
            "this server does not answer to the host `{shown}`; it answers to {}. Add names \
             with --allowed-hosts (SMOLBOT_ALLOWED_HOSTS)",
            allowed.described()
        ),
        param: None,
        code: Some("host_not_allowed"),
    };
    refuse(request.headers(), request.uri().path(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(extra: &[&str]) -> AllowedHosts {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        AllowedHosts::for_bind("127.0.0.1".parse().unwrap(), &extra)
    }

    #[test]
    fn loopback_answers_loopback_names_on_any_port() {
        let rule = loopback(&[]);
        for host in [
            "localhost",
            "localhost:3000",
            "LOCALHOST.:80",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:3000",
            "127.1.2.3:3000",
        ] {
            assert!(rule.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:3000",
            "localhost.evil.example",
            "10.0.0.1:3000",
            "[2001:db8::1]:3000",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!rule.allows(host), "{host}");
        }
    }

    #[test]
    fn allowed_hosts_add_names() {
        let rule = loopback(&["Chat.Example", " box.lan. "]);
        assert!(rule.allows("chat.example:443") && rule.allows("box.lan"));
        assert!(rule.allows("localhost:3000"));
        assert!(!rule.allows("evil.example"));
        assert_eq!(loopback(&["*"]), AllowedHosts::Any);
    }

    #[test]
    fn beyond_loopback_every_host_unless_named() {
        let any = AllowedHosts::for_bind("0.0.0.0".parse().unwrap(), &[]);
        assert!(any.allows("whatever.example"));
        let named = AllowedHosts::for_bind("0.0.0.0".parse().unwrap(), &["chat.lan".into()]);
        assert!(named.allows("chat.lan:3000") && named.allows("192.168.1.5:3000"));
        assert!(!named.allows("evil.example"));
    }
}
