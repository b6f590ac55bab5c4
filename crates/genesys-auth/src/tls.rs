//! Which certificate authorities TLS trusts: the bundled Mozilla roots always, the operating
//! system's store when asked (a TLS-inspecting proxy's CA is installed there), and any extra
//! roots given. REST (this crate) and the WebSockets (`presence-sync`) share this setting.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};

/// The roots TLS trusts. Cheap to clone; the operating system's store is read once, when
/// first needed, and clones share what was read.
///
/// ```
/// use genesys_auth::TlsRoots;
///
/// let roots = TlsRoots::bundled().native(true);
/// assert!(roots.uses_native());
/// ```
#[derive(Clone, Default)]
pub struct TlsRoots {
    native: bool,
    extra: Vec<CertificateDer<'static>>,
    loaded: Arc<OnceLock<Arc<[CertificateDer<'static>]>>>,
}

impl TlsRoots {
    /// Only the bundled Mozilla roots (`webpki-roots`): the default.
    pub fn bundled() -> TlsRoots {
        TlsRoots::default()
    }

    /// Also trust the operating system's certificate store (on Linux the files
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR` name, else the distribution's bundle; the system
    /// keychain on macOS and Windows). For a TLS-inspecting corporate proxy, whose CA is
    /// installed there. By default, off.
    pub fn native(mut self, on: bool) -> TlsRoots {
        self.native = on;
        self.loaded = Arc::default();
        self
    }

    /// Also trust this certificate authority (DER), such as a private CA. By default, none.
    pub fn add_der(mut self, der: impl Into<Vec<u8>>) -> TlsRoots {
        self.extra.push(CertificateDer::from(der.into()));
        self.loaded = Arc::default();
        self
    }

    /// Whether the operating system's store is trusted.
    pub fn uses_native(&self) -> bool {
        self.native
    }

    /// Whether only the bundled roots are trusted (nothing to load).
    pub fn is_bundled_only(&self) -> bool {
        !self.native && self.extra.is_empty()
    }

    /// Every trusted root as a certificate: the bundled ones, the operating system's (read on
    /// the first call), the extra ones. An operating system store that yields no certificate
    /// at all is an error naming the option (`tls-native-roots`); unreadable entries beside
    /// readable ones are logged and skipped.
    pub fn certificates(&self) -> Result<Arc<[CertificateDer<'static>]>> {
        if let Some(loaded) = self.loaded.get() {
            return Ok(Arc::clone(loaded));
        }
        let mut all: Vec<CertificateDer<'static>> =
            webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec();
        if self.native {
            let native = rustls_native_certs::load_native_certs();
            if native.certs.is_empty() {
                let reason = match native.errors.first() {
                    Some(error) => {
                        format!("no certificate found in the operating system's store: {error}")
                    }
                    None => "no certificate found in the operating system's store".to_owned(),
                };
                return Err(Error::Config {
                    option: "tls-native-roots",
                    reason,
                });
            }
            for error in &native.errors {
                log::warn!("skipped part of the operating system's certificate store: {error}");
            }
            log::info!(
                "trusting {} certificates of the operating system's store beside the {} bundled roots",
                native.certs.len(),
                all.len()
            );
            all.extend(native.certs);
        }
        all.extend(self.extra.iter().cloned());
        let loaded: Arc<[CertificateDer<'static>]> = all.into();
        Ok(Arc::clone(self.loaded.get_or_init(|| loaded)))
    }
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsRoots")
            .field("native", &self.native)
            .field("extra", &self.extra.len())
            .finish()
    }
}

impl PartialEq for TlsRoots {
    fn eq(&self, other: &TlsRoots) -> bool {
        self.native == other.native && self.extra == other.extra
    }
}

impl Eq for TlsRoots {}
