//! Who the brokers see: TLS to the brokers ([`Tls`], [`CaRoots`]), SASL credentials
//! ([`Sasl`], [`SaslMechanism`]), the [`SecurityProtocol`] the two select, [`redact`], which
//! scrubs their passwords (each a `secrecy` [`SecretString`]) from messages, and how these
//! become librdkafka properties (`security.protocol`, `ssl.*`, `sasl.*`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};

/// Where the broker's TLS certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaRoots {
    /// The system's trust store (librdkafka probes the usual locations).
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// TLS to the brokers. Setting it selects `SSL` (or `SASL_SSL` with [`Sasl`]).
#[derive(Clone, Debug)]
pub struct Tls {
    ca: CaRoots,
    client_cert: Option<(PathBuf, PathBuf)>,
    key_password: Option<SecretString>,
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

    /// The passphrase of an encrypted private key. It never prints (`Debug` shows
    /// `[REDACTED]`). By default, none.
    pub fn key_password(mut self, password: SecretString) -> Tls {
        self.key_password = Some(password);
        self
    }

    /// The CA certificates the broker is checked against.
    pub fn ca(&self) -> &CaRoots {
        &self.ca
    }

    /// The passphrase of the private key, if any (to scrub from messages).
    pub(crate) fn key_passphrase(&self) -> Option<&SecretString> {
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
            config.set("ssl.key.password", password.expose_secret());
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

    /// Every mechanism, in the order of their names in messages and `--help` lists.
    pub const ALL: [SaslMechanism; 3] = [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ];
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the Kafka spelling, in any case (`PLAIN`, `scram-sha-512`). The error, an
/// [`Error::Config`] for `sasl.mechanism`, lists the accepted names.
impl FromStr for SaslMechanism {
    type Err = Error;

    fn from_str(text: &str) -> Result<SaslMechanism> {
        parse_name(
            text,
            &SaslMechanism::ALL,
            SaslMechanism::as_str,
            "sasl.mechanism",
        )
    }
}

/// How the client talks to the brokers: librdkafka's `security.protocol`. A
/// [`KafkaConfig`](crate::KafkaConfig) does not take one directly: setting [`Tls`] and
/// [`Sasl`] selects it. It is for programs that let their users name the protocol (a flag)
/// and need to know which settings it calls for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    /// `plaintext`: neither TLS nor SASL. The default.
    #[default]
    Plaintext,
    /// `ssl`: TLS, no SASL.
    Ssl,
    /// `sasl_plaintext`: SASL without TLS.
    SaslPlaintext,
    /// `sasl_ssl`: SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol, in the order of their names in messages and `--help` lists.
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    /// The librdkafka spelling (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`).
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection uses TLS (`ssl`, `sasl_ssl`): a [`Tls`] setting is needed.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether the client authenticates with SASL (`sasl_plaintext`, `sasl_ssl`): a [`Sasl`]
    /// setting is needed.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// The protocol that these TLS and SASL settings select.
    pub fn selected_by(tls: Option<&Tls>, sasl: Option<&Sasl>) -> SecurityProtocol {
        match (tls.is_some(), sasl.is_some()) {
            (false, false) => SecurityProtocol::Plaintext,
            (true, false) => SecurityProtocol::Ssl,
            (false, true) => SecurityProtocol::SaslPlaintext,
            (true, true) => SecurityProtocol::SaslSsl,
        }
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the librdkafka spelling, in any case (`sasl_ssl`, `SASL_SSL`). The error, an
/// [`Error::Config`] for `security.protocol`, lists the accepted names.
impl FromStr for SecurityProtocol {
    type Err = Error;

    fn from_str(text: &str) -> Result<SecurityProtocol> {
        parse_name(
            text,
            &SecurityProtocol::ALL,
            SecurityProtocol::as_str,
            "security.protocol",
        )
    }
}

/// The one of `all` whose name is `text`, ignoring ASCII case; else a configuration error
/// for `option` that lists the names.
fn parse_name<T: Copy>(
    text: &str,
    all: &[T],
    name: fn(T) -> &'static str,
    option: &str,
) -> Result<T> {
    if let Some(found) = all.iter().find(|v| name(**v).eq_ignore_ascii_case(text)) {
        return Ok(*found);
    }
    let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
    let (last, rest) = names.split_last().unwrap_or((&"", &[]));
    Err(Error::Config {
        option: option.to_owned(),
        reason: format!("expected {} or {last}, got {text:?}", rest.join(", ")),
    })
}

/// SASL username/password authentication. Setting it selects `SASL_PLAINTEXT` (or `SASL_SSL`
/// with [`Tls`]).
#[derive(Clone, Debug)]
pub struct Sasl {
    mechanism: SaslMechanism,
    username: String,
    password: SecretString,
}

impl Sasl {
    /// Credentials for a mechanism. The password never prints (`Debug` shows `[REDACTED]`).
    pub fn new(
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password: SecretString,
    ) -> Sasl {
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
    pub(crate) fn password(&self) -> &SecretString {
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
        if self.password.expose_secret().is_empty() {
            return bad("sasl.password", "must not be empty".into());
        }
        Ok(())
    }

    /// Sets the `sasl.*` properties (mechanism, username, password).
    pub(crate) fn set_properties(&self, config: &mut ClientConfig) {
        config
            .set("sasl.mechanism", self.mechanism.as_str())
            .set("sasl.username", &self.username)
            .set("sasl.password", self.password.expose_secret());
    }
}

/// The librdkafka name of the security protocol that TLS and SASL settings select.
pub(crate) fn security_protocol(tls: Option<&Tls>, sasl: Option<&Sasl>) -> &'static str {
    SecurityProtocol::selected_by(tls, sasl).as_str()
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
pub(crate) fn redact(text: &str, secrets: &[SecretString]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        let secret = secret.expose_secret();
        if !secret.is_empty() {
            text = text.replace(secret, "<redacted>");
        }
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_in_any_case_and_print_as_librdkafka_spells_them() {
        for protocol in SecurityProtocol::ALL {
            let name = protocol.to_string();
            assert_eq!(name, protocol.as_str());
            assert_eq!(name.parse::<SecurityProtocol>().unwrap(), protocol);
            assert_eq!(
                name.to_ascii_uppercase()
                    .parse::<SecurityProtocol>()
                    .unwrap(),
                protocol
            );
        }
        assert_eq!(
            "Sasl_Ssl".parse::<SecurityProtocol>().unwrap(),
            SecurityProtocol::SaslSsl
        );
        assert_eq!(SecurityProtocol::default(), SecurityProtocol::Plaintext);
    }

    #[test]
    fn mechanisms_parse_in_any_case_and_print_as_kafka_spells_them() {
        for mechanism in SaslMechanism::ALL {
            let name = mechanism.to_string();
            assert_eq!(name, mechanism.as_str());
            assert_eq!(name.parse::<SaslMechanism>().unwrap(), mechanism);
            assert_eq!(
                name.to_ascii_lowercase().parse::<SaslMechanism>().unwrap(),
                mechanism
            );
        }
        assert_eq!(
            "Scram-Sha-256".parse::<SaslMechanism>().unwrap(),
            SaslMechanism::ScramSha256
        );
    }

    #[test]
    fn unknown_names_are_config_errors_that_list_the_accepted_ones() {
        let err = "tls".parse::<SecurityProtocol>().unwrap_err();
        assert!(
            matches!(&err, Error::Config { option, .. } if option == "security.protocol"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "invalid Kafka option security.protocol: expected plaintext, ssl, sasl_plaintext or sasl_ssl, got \"tls\""
        );
        let err = "GSSAPI".parse::<SaslMechanism>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid Kafka option sasl.mechanism: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, got \"GSSAPI\""
        );
        // Near misses are not guessed at.
        for text in ["", " ssl", "sasl", "SCRAM-SHA-1", "scram_sha_512"] {
            assert!(text.parse::<SecurityProtocol>().is_err(), "{text:?}");
            assert!(text.parse::<SaslMechanism>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn the_protocol_says_which_settings_it_needs_and_settings_select_it() {
        let tls = Tls::system_roots();
        let sasl = Sasl::new(SaslMechanism::Plain, "u", SecretString::from("p"));
        for protocol in SecurityProtocol::ALL {
            let selected = SecurityProtocol::selected_by(
                protocol.uses_tls().then_some(&tls),
                protocol.uses_sasl().then_some(&sasl),
            );
            assert_eq!(selected, protocol);
        }
        assert!(!SecurityProtocol::Plaintext.uses_tls());
        assert!(SecurityProtocol::SaslSsl.uses_tls() && SecurityProtocol::SaslSsl.uses_sasl());
    }
}
