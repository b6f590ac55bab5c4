//! Which HTTP proxy a connection goes through, read the way curl reads it: `https_proxy` for
//! `https://` and `wss://`, `http_proxy` for `http://` and `ws://`, `all_proxy` for either,
//! and `no_proxy` for the hosts that go direct. REST (this crate) and the WebSockets
//! (`presence-sync`) share this one reading, so a host is never proxied on one and direct on
//! the other.

use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};

/// curl's default proxy port, used when a proxy URL names none.
const DEFAULT_PROXY_PORT: u16 = 1080;

/// An HTTP proxy that tunnels with `CONNECT`. Prints without its credentials.
#[derive(Clone)]
pub struct ProxyServer {
    host: String,
    port: u16,
    credentials: Option<(String, SecretString)>,
}

impl ProxyServer {
    /// Parses `http://[user:password@]host[:port][/]` or `host[:port]` (curl's forms; the port
    /// defaults to 1080 as in curl; user and password are percent-decoded). Only `http://`
    /// proxies are supported: the connection to the proxy itself is plain, what runs through
    /// the tunnel (TLS to Genesys) is not.
    pub fn parse(url: &str) -> Result<ProxyServer, String> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{scheme}:// proxies are not supported, only http:// (CONNECT)"
                ));
            }
            None => url,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (host, port) = split_host_port(host_port)?;
        let credentials = userinfo.map(|userinfo| {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (
                percent_decode(user),
                SecretString::from(percent_decode(password)),
            )
        });
        Ok(ProxyServer {
            host,
            port: port.unwrap_or(DEFAULT_PROXY_PORT),
            credentials,
        })
    }

    /// The proxy's host name or address (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name, when the proxy URL had one.
    pub fn username(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(user, _)| user.as_str())
    }

    /// The value of a `Proxy-Authorization` header (`Basic ...`) when the proxy URL had
    /// credentials. Goes only to the proxy, in the `CONNECT` request.
    pub fn authorization(&self) -> Option<String> {
        self.credentials.as_ref().map(|(user, password)| {
            let pair = format!("{user}:{}", password.expose_secret());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        })
    }

    /// The password, for an HTTP client that builds its own `Proxy-Authorization`.
    pub(crate) fn password(&self) -> Option<&SecretString> {
        self.credentials.as_ref().map(|(_, password)| password)
    }
}

impl fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ProxyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials.
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

/// One `no_proxy` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bypass {
    /// `*`: every host.
    All,
    /// A host name: that host and every host under it (`example.com` also covers
    /// `api.example.com`; a leading dot is ignored, as in curl).
    Domain(String),
    /// An address, or a network in CIDR notation (`10.0.0.0/8`, `fd00::/8`).
    Network(IpAddr, u8),
}

impl Bypass {
    fn parse(entry: &str) -> Option<Bypass> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        if entry == "*" {
            return Some(Bypass::All);
        }
        let (address, bits) = match entry.split_once('/') {
            Some((address, bits)) => (address, bits.parse::<u8>().ok()),
            None => (entry, None),
        };
        let address = address.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = address.parse::<IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return Some(Bypass::Network(ip, bits.unwrap_or(max).min(max)));
        }
        let domain = entry.trim_start_matches('.').trim_end_matches('.');
        (!domain.is_empty()).then(|| Bypass::Domain(domain.to_ascii_lowercase()))
    }

    fn matches(&self, host: &str, ip: Option<IpAddr>) -> bool {
        match self {
            Bypass::All => true,
            Bypass::Domain(domain) => {
                host == domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            Bypass::Network(network, bits) => ip.is_some_and(|ip| in_network(ip, *network, *bits)),
        }
    }
}

fn in_network(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// Which proxy, if any, each connection goes through. By default (in [`AuthConfig`] and in
/// `presence-sync`'s `SyncConfig`), read from the environment with [`from_env`]: the same
/// variables curl reads.
///
/// [`AuthConfig`]: crate::AuthConfig
/// [`from_env`]: ProxySettings::from_env
///
/// ```
/// use genesys_auth::ProxySettings;
///
/// let vars = [("HTTPS_PROXY", "http://proxy.corp:3128"), ("NO_PROXY", "localhost, .internal")];
/// let proxy = ProxySettings::from_lookup(|name| {
///     vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
/// });
/// assert_eq!(proxy.for_url("https://api.mypurecloud.ie/api/v2/users").map(|p| p.port()), Some(3128));
/// assert!(proxy.for_url("wss://streaming.mypurecloud.ie/channels/1").is_some());
/// assert!(proxy.for_url("https://relay.internal/").is_none());
/// assert!(proxy.for_url("http://localhost:8080/").is_none());
/// ```
#[derive(Clone, Default)]
pub struct ProxySettings {
    https: Option<ProxyServer>,
    http: Option<ProxyServer>,
    bypass: Vec<Bypass>,
    /// The first variable that could not be read, and why: reported by `validate`.
    invalid: Option<(&'static str, String)>,
}

impl ProxySettings {
    /// No proxy: every connection goes direct.
    pub fn none() -> ProxySettings {
        ProxySettings::default()
    }

    /// The proxies the environment names, as curl reads them. For `https://` and `wss://`:
    /// `https_proxy`, then `HTTPS_PROXY`, then `all_proxy`/`ALL_PROXY`. For `http://` and
    /// `ws://`: `http_proxy`, then `HTTP_PROXY`, then `all_proxy`/`ALL_PROXY`. Hosts in
    /// `no_proxy` (or `NO_PROXY`) go direct. An empty variable counts as unset. A variable
    /// that cannot be used (another scheme than `http://`, a bad port) is reported by
    /// [`validate`](ProxySettings::validate), naming the variable.
    pub fn from_env() -> ProxySettings {
        ProxySettings::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](ProxySettings::from_env) with the variables read through `lookup` (for
    /// tests, or configuration that does not live in the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> ProxySettings {
        let first = |names: &[&'static str]| {
            names.iter().find_map(|name| {
                lookup(name)
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (*name, value))
            })
        };
        let all = ["all_proxy", "ALL_PROXY"];
        let mut settings = ProxySettings::none();
        let mut server = |names: &[&'static str]| {
            let (name, value) = first(names).or_else(|| first(&all))?;
            match ProxyServer::parse(&value) {
                Ok(server) => Some(server),
                Err(reason) => {
                    settings.invalid.get_or_insert((name, reason));
                    None
                }
            }
        };
        let https = server(&["https_proxy", "HTTPS_PROXY"]);
        let http = server(&["http_proxy", "HTTP_PROXY"]);
        settings.https = https;
        settings.http = http;
        if let Some((_, no_proxy)) = first(&["no_proxy", "NO_PROXY"]) {
            settings = settings.no_proxy(&no_proxy);
        }
        settings
    }

    /// The proxy for `https://` and `wss://` connections. By default, none.
    pub fn https_proxy(mut self, server: Option<ProxyServer>) -> ProxySettings {
        self.https = server;
        self
    }

    /// The proxy for `http://` and `ws://` connections. By default, none.
    pub fn http_proxy(mut self, server: Option<ProxyServer>) -> ProxySettings {
        self.http = server;
        self
    }

    /// Adds hosts that go direct, as in `NO_PROXY`: comma-separated host names (each also
    /// covering the hosts under it), addresses, networks (`10.0.0.0/8`), or `*` for all.
    /// Ports are not considered. By default, none.
    pub fn no_proxy(mut self, list: &str) -> ProxySettings {
        self.bypass
            .extend(list.split([',', ' ', '\t', '\n']).filter_map(Bypass::parse));
        self
    }

    /// Whether any proxy is set.
    pub fn is_none(&self) -> bool {
        self.https.is_none() && self.http.is_none()
    }

    /// The proxy for a connection to `host` (a name or an address, IPv6 with or without
    /// brackets), over TLS (`https`, `wss`) or not; `None` to go direct.
    pub fn for_host(&self, tls: bool, host: &str) -> Option<&ProxyServer> {
        let server = if tls { &self.https } else { &self.http };
        let server = server.as_ref()?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        if self.bypass.iter().any(|entry| entry.matches(&host, ip)) {
            return None;
        }
        Some(server)
    }

    /// The proxy for a URL (`https`, `wss`, `http` or `ws`); `None` to go direct, or when the
    /// URL has no host.
    pub fn for_url(&self, url: &str) -> Option<&ProxyServer> {
        let (scheme, rest) = url.split_once("://")?;
        let tls = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss");
        let authority = rest.split(['/', '?', '#']).next()?;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let (host, _) = split_host_port(host_port).ok()?;
        self.for_host(tls, &host)
    }

    /// Reports a proxy variable that could not be used, naming it.
    pub fn validate(&self) -> Result<()> {
        match &self.invalid {
            Some((name, reason)) => Err(Error::Config {
                option: name,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxySettings")
            .field("https", &self.https)
            .field("http", &self.http)
            .field("no_proxy", &self.bypass)
            .finish()
    }
}

/// Splits `host[:port]` or `[v6]:port`; the host comes back without brackets.
fn split_host_port(host_port: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |port: &str| format!("bad port {port:?}");
    let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the host".to_owned())?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port.parse().map_err(|_| bad_port(port))?)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("unexpected {after:?} after the host")),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse().map_err(|_| bad_port(port))?)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    Ok((host.to_owned(), port))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                out.push((hex(hi).unwrap_or(0) * 16 + hex(lo).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> ProxySettings {
        ProxySettings::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    fn port(settings: &ProxySettings, url: &str) -> Option<u16> {
        settings.for_url(url).map(ProxyServer::port)
    }

    #[test]
    fn each_scheme_reads_its_own_variable_lowercase_first() {
        let s = settings(&[
            ("https_proxy", "http://lower:1001"),
            ("HTTPS_PROXY", "http://upper:1002"),
            ("HTTP_PROXY", "upper-http:1003"),
        ]);
        assert_eq!(port(&s, "https://api.example.com/x"), Some(1001));
        assert_eq!(port(&s, "wss://streaming.example.com/c"), Some(1001));
        assert_eq!(port(&s, "http://api.example.com/x"), Some(1003));
        assert_eq!(port(&s, "ws://api.example.com/x"), Some(1003));
        let upper = settings(&[("HTTPS_PROXY", "http://upper:1002")]);
        assert_eq!(port(&upper, "https://a.example.com"), Some(1002));
        assert_eq!(port(&upper, "http://a.example.com"), None);
    }

    #[test]
    fn all_proxy_fills_in_and_empty_counts_as_unset() {
        let s = settings(&[("https_proxy", " "), ("ALL_PROXY", "http://all:1004")]);
        assert_eq!(port(&s, "https://a.example.com"), Some(1004));
        assert_eq!(port(&s, "http://a.example.com"), Some(1004));
        assert!(settings(&[]).is_none());
    }

    #[test]
    fn no_proxy_matches_as_curl_does() {
        let s = settings(&[
            ("HTTPS_PROXY", "proxy:3128"),
            (
                "no_proxy",
                "localhost, .internal.corp,example.org , 10.0.0.0/8,::1,[fd00::]/8",
            ),
        ]);
        for direct in [
            "https://localhost:8443/",
            "https://LOCALHOST/",
            "https://a.internal.corp/",
            "https://internal.corp/",
            "https://example.org/",
            "https://api.example.org./",
            "https://10.1.2.3/",
            "https://[::1]:443/",
            "https://[fd00::5]/",
            "https://user@example.org/",
        ] {
            assert_eq!(port(&s, direct), None, "{direct} goes direct");
        }
        for proxied in [
            "https://notlocalhost/",
            "https://badexample.org/",
            "https://example.org.evil.com/",
            "https://11.0.0.1/",
            "https://[fe80::1]/",
        ] {
            assert_eq!(port(&s, proxied), Some(3128), "{proxied} is proxied");
        }
        let star = settings(&[("HTTPS_PROXY", "proxy:3128"), ("NO_PROXY", "*")]);
        assert_eq!(port(&star, "https://anything/"), None);
    }

    #[test]
    fn proxy_urls_parse_like_curl_and_print_without_credentials() {
        let p = ProxyServer::parse("http://DOM%5Cuser:p%40ss@proxy.corp:8080/").expect("parses");
        assert_eq!((p.host(), p.port()), ("proxy.corp", 8080));
        assert_eq!(p.username(), Some("DOM\\user"));
        assert_eq!(
            p.authorization().as_deref(),
            Some("Basic RE9NXHVzZXI6cEBzcw==")
        );
        assert_eq!(
            format!("{p:?} {p}"),
            "http://proxy.corp:8080 http://proxy.corp:8080"
        );
        let v6 = ProxyServer::parse("[::1]").expect("parses");
        assert_eq!((v6.host(), v6.port()), ("::1", 1080));
        assert_eq!(v6.to_string(), "http://[::1]:1080");
    }

    #[test]
    fn unusable_variables_are_named_by_validate() {
        let socks = settings(&[("HTTPS_PROXY", "socks5://proxy:1080")]);
        let err = socks.validate().expect_err("socks is refused");
        assert!(err.to_string().contains("HTTPS_PROXY"), "{err}");
        assert!(err.to_string().contains("socks5"), "{err}");
        let port = settings(&[("http_proxy", "http://proxy:99999")]);
        assert!(port.validate().is_err());
        assert!(
            settings(&[("HTTPS_PROXY", "http://p:1")])
                .validate()
                .is_ok()
        );
    }
}
