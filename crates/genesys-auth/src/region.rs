//! Genesys Cloud environments and the hosts that serve them.

use crate::error::{Error, Result};

/// A Genesys Cloud environment (a domain such as `mypurecloud.com`) and its cloud region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Environment {
    /// The domain: API at `https://api.{domain}`, login at `https://login.{domain}`.
    pub domain: &'static str,
    /// The cloud region it runs in.
    pub region: &'static str,
}

/// Every environment Genesys documents.
pub const ENVIRONMENTS: &[Environment] = &[
    Environment {
        domain: "mypurecloud.com",
        region: "us-east-1",
    },
    Environment {
        domain: "use2.us-gov-pure.cloud",
        region: "us-east-2 (FedRAMP)",
    },
    Environment {
        domain: "usw2.pure.cloud",
        region: "us-west-2",
    },
    Environment {
        domain: "cac1.pure.cloud",
        region: "ca-central-1",
    },
    Environment {
        domain: "sae1.pure.cloud",
        region: "sa-east-1",
    },
    Environment {
        domain: "mxc1.pure.cloud",
        region: "mx-central-1",
    },
    Environment {
        domain: "mypurecloud.ie",
        region: "eu-west-1",
    },
    Environment {
        domain: "euw2.pure.cloud",
        region: "eu-west-2",
    },
    Environment {
        domain: "mypurecloud.de",
        region: "eu-central-1",
    },
    Environment {
        domain: "euc2.pure.cloud",
        region: "eu-central-2",
    },
    Environment {
        domain: "edee1.eusc-pure.cloud",
        region: "eusc-de-east-1",
    },
    Environment {
        domain: "mec1.pure.cloud",
        region: "me-central-1",
    },
    Environment {
        domain: "aps1.pure.cloud",
        region: "ap-south-1",
    },
    Environment {
        domain: "apse1.pure.cloud",
        region: "ap-southeast-1",
    },
    Environment {
        domain: "mypurecloud.com.au",
        region: "ap-southeast-2",
    },
    Environment {
        domain: "mypurecloud.jp",
        region: "ap-northeast-1",
    },
    Environment {
        domain: "apne2.pure.cloud",
        region: "ap-northeast-2",
    },
    Environment {
        domain: "apne3.pure.cloud",
        region: "ap-northeast-3",
    },
];

/// Where to send API calls and token requests.
///
/// ```
/// use genesys_auth::Endpoints;
///
/// let real = Endpoints::for_environment("mypurecloud.ie")?;
/// assert_eq!(real.api_base(), "https://api.mypurecloud.ie");
/// assert_eq!(real.login_base(), "https://login.mypurecloud.ie");
///
/// let local = Endpoints::new("http://127.0.0.1:8089/", "http://127.0.0.1:8089")?;
/// assert_eq!(local.api_base(), "http://127.0.0.1:8089");
/// # Ok::<(), genesys_auth::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    api_base: String,
    login_base: String,
}

impl Endpoints {
    /// The hosts of a documented environment (case-insensitive, a leading `api.` or `login.`
    /// is tolerated). An unknown domain is an error that lists the known ones; use
    /// [`Endpoints::new`] for anything else (a proxy, the emulator).
    pub fn for_environment(domain: &str) -> Result<Endpoints> {
        let wanted = domain.trim().trim_end_matches('/').to_ascii_lowercase();
        let wanted = wanted
            .strip_prefix("api.")
            .or_else(|| wanted.strip_prefix("login."))
            .unwrap_or(&wanted);
        let env = ENVIRONMENTS
            .iter()
            .find(|e| e.domain == wanted)
            .ok_or_else(|| Error::Config {
                option: "region",
                reason: format!(
                    "unknown Genesys Cloud environment {domain:?}; known: {}",
                    ENVIRONMENTS
                        .iter()
                        .map(|e| e.domain)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        Ok(Endpoints {
            api_base: format!("https://api.{}", env.domain),
            login_base: format!("https://login.{}", env.domain),
        })
    }

    /// Explicit base URLs (`http://` or `https://`, no trailing slash needed).
    pub fn new(api_base: &str, login_base: &str) -> Result<Endpoints> {
        Ok(Endpoints {
            api_base: base_url("api-url", api_base)?,
            login_base: base_url("login-url", login_base)?,
        })
    }

    /// Replaces the API base URL.
    pub fn with_api_base(mut self, api_base: &str) -> Result<Endpoints> {
        self.api_base = base_url("api-url", api_base)?;
        Ok(self)
    }

    /// Replaces the login base URL.
    pub fn with_login_base(mut self, login_base: &str) -> Result<Endpoints> {
        self.login_base = base_url("login-url", login_base)?;
        Ok(self)
    }

    /// The API base URL, without a trailing slash.
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// The login base URL, without a trailing slash.
    pub fn login_base(&self) -> &str {
        &self.login_base
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.login_base)
    }

    /// An absolute URL for an API path (`/api/v2/...`), or an absolute URL returned by the
    /// API (such as a page's `nextUri`), which is kept as it is only when its scheme, host and
    /// port are the API base's: the bearer token is sent to that URL, so anything else is
    /// [`Error::ForeignUrl`], naming the origin it pointed to.
    pub fn api_url(&self, path_or_url: &str) -> Result<String> {
        if is_absolute(path_or_url) {
            let wanted = origin_of(&self.api_base);
            let found = origin_of(path_or_url);
            match (&wanted, &found) {
                (Some(wanted), Some(found)) if wanted == found => Ok(path_or_url.to_owned()),
                _ => Err(Error::ForeignUrl {
                    origin: found.map_or_else(|| "an unreadable URL".to_owned(), |o| o.to_string()),
                    api_origin: wanted.map_or_else(|| self.api_base.clone(), |o| o.to_string()),
                }),
            }
        } else if path_or_url.starts_with('/') {
            Ok(format!("{}{path_or_url}", self.api_base))
        } else {
            Ok(format!("{}/{path_or_url}", self.api_base))
        }
    }
}

/// Whether `url` names its own scheme (and so its own host), rather than a path on the base.
fn is_absolute(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    }) || url.starts_with("//")
}

/// Scheme, host and port of a URL: what must match before the token is sent to it.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The origin of an absolute `http`/`https` URL; `None` for anything else, and for a URL
/// with userinfo (`user@host`), which is never one of ours.
fn origin_of(url: &str) -> Option<Origin> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    Some(Origin {
        host: authority.host().to_ascii_lowercase(),
        port: authority.port_u16().unwrap_or(default_port),
        scheme,
    })
}

fn base_url(option: &'static str, url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| Error::Config {
            option,
            reason: format!("{url:?} must start with http:// or https://"),
        })?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(Error::Config {
            option,
            reason: format!("{url:?} has no host"),
        });
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_environment_resolves() {
        for env in ENVIRONMENTS {
            let e = Endpoints::for_environment(env.domain).expect(env.domain);
            assert_eq!(e.api_base(), format!("https://api.{}", env.domain));
            assert_eq!(
                e.token_url(),
                format!("https://login.{}/oauth/token", env.domain)
            );
        }
        assert!(Endpoints::for_environment("API.MyPureCloud.com").is_ok());
    }

    #[test]
    fn unknown_environment_names_the_option() {
        let err = Endpoints::for_environment("example.com").expect_err("unknown");
        let text = err.to_string();
        assert!(
            text.contains("region")
                && text.contains("example.com")
                && text.contains("mypurecloud.ie"),
            "{text}"
        );
    }

    #[test]
    fn overrides_are_checked_and_joined() {
        let e = Endpoints::new("http://127.0.0.1:1/", "http://127.0.0.1:2").expect("valid");
        assert_eq!(
            e.api_url("/api/v2/users").expect("path"),
            "http://127.0.0.1:1/api/v2/users"
        );
        assert_eq!(
            e.api_url("api/v2/users").expect("path"),
            "http://127.0.0.1:1/api/v2/users"
        );
        assert_eq!(
            e.api_url("http://127.0.0.1:1/api/v2/users?pageNumber=2")
                .expect("same origin"),
            "http://127.0.0.1:1/api/v2/users?pageNumber=2"
        );
        assert!(Endpoints::new("ftp://x", "http://y").is_err());
    }

    #[test]
    fn absolute_urls_are_kept_only_on_the_api_origin() {
        let real = Endpoints::for_environment("mypurecloud.ie").expect("env");
        for same in [
            "https://api.mypurecloud.ie/api/v2/users?pageNumber=2",
            "https://API.mypurecloud.ie:443/api/v2/users",
            "HTTPS://api.mypurecloud.ie/api/v2/users",
        ] {
            assert_eq!(real.api_url(same).expect(same), same);
        }
        for foreign in [
            "http://api.mypurecloud.ie/api/v2/users",
            "https://api.mypurecloud.ie:8443/api/v2/users",
            "https://api.mypurecloud.ie.evil.example/api/v2/users",
            "https://evil.example/api/v2/users",
            "https://api.mypurecloud.ie@evil.example/api/v2/users",
            "https://user:pw@api.mypurecloud.ie/api/v2/users",
            "//evil.example/api/v2/users",
            "ftp://api.mypurecloud.ie/x",
            "https://[::1/x",
        ] {
            let err = real.api_url(foreign).expect_err(foreign);
            assert!(
                matches!(err, Error::ForeignUrl { .. })
                    && err.to_string().contains("api.mypurecloud.ie:443"),
                "{foreign}: {err}"
            );
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        let err = real
            .api_url("https://evil.example:8080/a?b=c")
            .expect_err("foreign");
        assert!(
            err.to_string().contains("https://evil.example:8080"),
            "{err}"
        );
        assert!(Endpoints::new("http://", "http://y").is_err());
    }
}
