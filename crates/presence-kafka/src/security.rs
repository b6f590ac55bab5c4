//! Who the brokers see: TLS to the brokers ([`Tls`], [`CaRoots`]), SASL credentials
//! ([`Sasl`], [`SaslMechanism`]), the [`Secret`] that holds their passwords (and [`redact`],
//! which scrubs secrets from messages), and how these become librdkafka properties
//! (`security.protocol`, `ssl.*`, `sasl.*`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rdkafka::ClientConfig;

use crate::error::{Error, Result};

/// A password or key passphrase. It never appears in `Debug` or `Display` output, so it stays
/// out of logs and error messages; only the client connection sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself. Call only where it is handed to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the broker's TLS certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaRoots {
    /// The system's trust store (librdkafka probes the usual locations).
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// TLS to the brokers. Setting it selects `SSL` (or `SASL_SSL` with [`Sasl`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    ca: CaRoots,
    client_cert: Option<(PathBuf, PathBuf)>,
    key_password: Option<Secret>,
}

impl Tls {
    /// TLS trusting the system's CA certificates (most managed Kafka services).
    pub fn system_roots() -> Tls {
        Tls {
            ca: CaRoots::System,
            client_cert: None,
            key_password: None,
        }
    }

    /// TLS trusting the CA certificates in a PEM file.
    pub fn ca_file(path: impl Into<PathBuf>) -> Tls {
        Tls {
            ca: CaRoots::File(path.into()),
            client_cert: None,
            key_password: None,
        }
    }

    /// Authenticates this client with a certificate and private key (PEM files), for brokers
    /// that require mutual TLS. By default, no client certificate.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Tls {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The passphrase of an encrypted private key. By default, none.
    pub fn key_password(mut self, password: Secret) -> Tls {
        self.key_password = Some(password);
        self
    }

    /// The CA certificates the broker is checked against.
    pub fn ca(&self) -> &CaRoots {
        &self.ca
    }

    /// The passphrase of the private key, if any (to scrub from messages).
    pub(crate) fn key_passphrase(&self) -> Option<&Secret> {
        self.key_password.as_ref()
    }

    /// Checks that the files exist; the error names the option (`tls.ca_file`,
    /// `tls.client_cert`, `tls.client_key`).
    pub(crate) fn validate(&self) -> Result<()> {
        if let CaRoots::File(path) = &self.ca {
            check_file("tls.ca_file", path)?;
        }
        if let Some((cert, key)) = &self.client_cert {
            check_file("tls.client_cert", cert)?;
            check_file("tls.client_key", key)?;
        }
        Ok(())
    }

    /// Sets the `ssl.*` properties (the CA, the client certificate and key, the key's
    /// passphrase).
    pub(crate) fn set_properties(&self, config: &mut ClientConfig) {
        match &self.ca {
            CaRoots::System => config.set("ssl.ca.location", "probe"),
            CaRoots::File(path) => config.set("ssl.ca.location", path.to_string_lossy()),
        };
        if let Some((cert, key)) = &self.client_cert {
            config
                .set("ssl.certificate.location", cert.to_string_lossy())
                .set("ssl.key.location", key.to_string_lossy());
        }
        if let Some(password) = &self.key_password {
            config.set("ssl.key.password", password.expose());
        }
    }
}

/// A SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslMechanism {
    /// `PLAIN`: the password crosses the wire, so use it only with TLS.
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl SaslMechanism {
    /// The Kafka spelling (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL username/password authentication. Setting it selects `SASL_PLAINTEXT` (or `SASL_SSL`
/// with [`Tls`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sasl {
    mechanism: SaslMechanism,
    username: String,
    password: Secret,
}

impl Sasl {
    /// Credentials for a mechanism.
    pub fn new(mechanism: SaslMechanism, username: impl Into<String>, password: Secret) -> Sasl {
        Sasl {
            mechanism,
            username: username.into(),
            password,
        }
    }

    /// The mechanism.
    pub fn mechanism(&self) -> SaslMechanism {
        self.mechanism
    }

    /// The username.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password (to scrub from messages).
    pub(crate) fn password(&self) -> &Secret {
        &self.password
    }

    /// Checks that the username and the password are not empty; the error names the option
    /// (`sasl.username`, `sasl.password`).
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |option: &str, reason: String| {
            Err(Error::Config {
                option: option.to_owned(),
                reason,
            })
        };
        if self.username.is_empty() {
            return bad("sasl.username", "must not be empty".into());
        }
        if self.password.is_empty() {
            return bad("sasl.password", "must not be empty".into());
        }
        Ok(())
    }

    /// Sets the `sasl.*` properties (mechanism, username, password).
    pub(crate) fn set_properties(&self, config: &mut ClientConfig) {
        config
            .set("sasl.mechanism", self.mechanism.as_str())
            .set("sasl.username", &self.username)
            .set("sasl.password", self.password.expose());
    }
}

/// The security protocol that TLS and SASL settings select.
pub(crate) fn security_protocol(tls: Option<&Tls>, sasl: Option<&Sasl>) -> &'static str {
    match (tls.is_some(), sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    }
}

fn check_file(option: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(Error::Config {
            option: option.to_owned(),
            reason: format!("{} is not a file", path.display()),
        }),
        Err(e) => Err(Error::Config {
            option: option.to_owned(),
            reason: format!("{}: {e}", path.display()),
        }),
    }
}

/// Replaces every occurrence of a secret in `text` with `<redacted>`.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if !secret.is_empty() {
            text = text.replace(secret.as_str(), "<redacted>");
        }
    }
    text
}
