//! Test support for "behind a corporate proxy", shared by genesys-auth's and presence-sync's
//! proxy tests (presence-sync includes this file by path): a CONNECT proxy on loopback that
//! records what it sees, and a TLS terminator with a certificate made for the test, in front
//! of the (plain HTTP) emulator. Real sockets, port 0.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;

use genesys_auth::ProxySettings;
use genesys_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a [`ConnectProxy`] saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// The target of each `CONNECT` (`host:port`), in order.
    pub connects: Vec<String>,
    /// The `Proxy-Authorization` header of each `CONNECT` (None when absent).
    pub authorizations: Vec<Option<String>>,
    /// Every byte clients sent through the tunnels, after the `CONNECT` exchange.
    pub tunnelled: Vec<u8>,
    /// Requests that were not `CONNECT` (their first line).
    pub other_requests: Vec<String>,
}

/// The emulator on 127.0.0.1:0 with `users` users changing presence `change_rate` times a
/// second.
pub async fn emulator(users: u32, change_rate: f64) -> EmulatorHandle {
    Emulator::start(
        EmulatorConfig::default()
            .users(users)
            .change_rate(change_rate),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("emulator starts")
}

/// Proxy settings as if `vars` were the environment.
pub fn env(vars: &[(&str, String)]) -> ProxySettings {
    ProxySettings::from_lookup(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    })
}

impl Seen {
    /// Asserts that every tunnel went to `target`, carried TLS from its first byte, and that
    /// none of `secrets` passed through in clear.
    pub fn assert_only_tls_to(&self, target: SocketAddr, secrets: &[&str]) {
        assert!(
            !self.connects.is_empty() && self.connects.iter().all(|c| *c == target.to_string()),
            "every tunnel went to {target}: {:?}",
            self.connects
        );
        assert!(self.other_requests.is_empty(), "{:?}", self.other_requests);
        assert_eq!(
            self.tunnelled.first(),
            Some(&0x16),
            "the tunnel starts with a TLS handshake record"
        );
        for secret in secrets {
            assert!(
                !self.tunnelled_contains(secret),
                "the proxy saw {secret:?} in clear"
            );
        }
    }

    /// Whether a tunnel to `target` was asked for.
    pub fn connected_to(&self, target: SocketAddr) -> bool {
        self.connects.iter().any(|c| *c == target.to_string())
    }

    /// Whether `needle` occurs in what clients sent through the tunnels.
    pub fn tunnelled_contains(&self, needle: &str) -> bool {
        let needle = needle.as_bytes();
        !needle.is_empty()
            && self
                .tunnelled
                .windows(needle.len())
                .any(|window| window.eq_ignore_ascii_case(needle))
    }
}

/// A CONNECT proxy on 127.0.0.1:0: answers `CONNECT host:port` with 200 and pipes bytes both
/// ways, recording the request and what the client sends. Stops when dropped.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    /// A proxy that lets every `CONNECT` through.
    pub async fn start() -> ConnectProxy {
        ConnectProxy::start_with(None).await
    }

    /// A proxy that answers 407 unless `Proxy-Authorization` is exactly `authorization`.
    pub async fn requiring(authorization: &str) -> ConnectProxy {
        ConnectProxy::start_with(Some(authorization.to_owned())).await
    }

    async fn start_with(required: Option<String>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let seen = Arc::clone(&shared);
                let required = required.clone();
                tokio::spawn(async move {
                    let _ = serve(client, seen, required).await;
                });
            }
        });
        ConnectProxy { addr, seen, task }
    }

    /// `http://127.0.0.1:port`, for `HTTPS_PROXY` and the like.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve(
    mut client: TcpStream,
    seen: Arc<Mutex<Seen>>,
    required: Option<String>,
) -> std::io::Result<()> {
    let head = read_head(&mut client).await?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let authorization = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, value)| value.trim().to_owned());
    let Some(target) = request_line
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_owned)
    else {
        seen.lock().other_requests.push(request_line);
        client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    {
        let mut seen = seen.lock();
        seen.connects.push(target.clone());
        seen.authorizations.push(authorization.clone());
    }
    if required.is_some() && authorization != required {
        client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    let upstream = match TcpStream::connect(&target).await {
        Ok(upstream) => upstream,
        Err(_) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let recorder = Arc::clone(&seen);
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return upstream_write.shutdown().await;
            }
            recorder.lock().tunnelled.extend_from_slice(&buf[..n]);
            upstream_write.write_all(&buf[..n]).await?;
        }
    };
    let down = async move {
        tokio::io::copy(&mut upstream_read, &mut client_write).await?;
        client_write.shutdown().await
    };
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Reads an HTTP request head (through the blank line), byte by byte so that nothing after
/// it is consumed.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A test certificate authority and a server certificate it signed for `127.0.0.1` and
/// `localhost`.
pub struct TestPki {
    /// The CA certificate (DER), to trust.
    pub ca_der: Vec<u8>,
    /// The CA certificate (PEM), for `SSL_CERT_FILE`.
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "presence-bridge test CA");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("leaf params");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .expect("server config");
        TestPki {
            ca_der: ca.der().to_vec(),
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

/// A TLS terminator on 127.0.0.1:0: accepts TLS with the [`TestPki`] server certificate and
/// pipes the plain bytes to `target` (the emulator). Stops when dropped.
pub struct TlsTerminator {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsTerminator {
    pub async fn start(pki: &TestPki, target: SocketAddr) -> TlsTerminator {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tls");
        let addr = listener.local_addr().expect("tls addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&pki.server));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        TlsTerminator { addr, task }
    }

    /// `https://127.0.0.1:port`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }
}
