//! How a WebSocket reaches its server: direct, or through the HTTP proxy that
//! [`SyncConfig::proxy`] names for its host (a `CONNECT` tunnel, then TLS and the WebSocket
//! handshake inside it, so the proxy sees the host and port and nothing else), trusting
//! [`SyncConfig::tls_roots`]. The channels and the relay both open their sockets here.

use std::sync::Arc;

use genesys_auth::ProxyServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::channel::Ws;
use crate::config::SyncConfig;

/// Largest proxy answer to `CONNECT` read (status line and headers).
const MAX_PROXY_ANSWER: usize = 16 * 1024;

/// Why a proxy did not open the tunnel. Reaches the session inside tungstenite's I/O error, so
/// its text is what the log shows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The proxy answered `CONNECT` with another status than 2xx (407: it wants credentials,
    /// given in the proxy URL as `http://user:password@host:port`).
    #[error("the proxy {proxy} refused CONNECT with HTTP {status}")]
    Refused {
        /// The proxy (never its credentials).
        proxy: String,
        /// Its answer's status.
        status: u16,
    },
    /// The proxy's answer was not HTTP, too long, or cut short.
    #[error("the proxy {proxy} answered CONNECT with something other than HTTP")]
    BadAnswer {
        /// The proxy (never its credentials).
        proxy: String,
    },
}

/// Opens the WebSocket of `request` with `ws_config`: through the configured proxy when one
/// applies to its host, else direct.
pub(crate) async fn open(
    request: Request,
    ws_config: WebSocketConfig,
    config: &SyncConfig,
) -> Result<(Ws, Response), WsError> {
    let uri = request.uri();
    let tls = uri.scheme_str() == Some("wss");
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connector = connector(config)?;
    match config.proxy.for_host(tls, &host) {
        None => {
            tokio_tungstenite::connect_async_tls_with_config(
                request,
                Some(ws_config),
                true,
                connector,
            )
            .await
        }
        Some(proxy) => {
            let stream = tunnel(proxy, &host, port).await?;
            tokio_tungstenite::client_async_tls_with_config(
                request,
                stream,
                Some(ws_config),
                connector,
            )
            .await
        }
    }
}

/// The TLS settings for `wss://`: `None` (tokio-tungstenite's own, with the same bundled
/// roots) unless other roots are configured.
fn connector(config: &SyncConfig) -> Result<Option<Connector>, WsError> {
    if config.tls_roots.is_bundled_only() {
        return Ok(None);
    }
    let certificates = config
        .tls_roots
        .certificates()
        .map_err(std::io::Error::other)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certificates.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(Connector::Rustls(Arc::new(tls))))
}

/// Connects to `proxy` and asks it for a tunnel to `host:port`; the stream returned carries
/// the tunnel.
async fn tunnel(proxy: &ProxyServer, host: &str, port: u16) -> Result<TcpStream, WsError> {
    let mut stream = TcpStream::connect((proxy.host(), proxy.port())).await?;
    stream.set_nodelay(true)?;
    // An IPv6 address is bracketed in the authority; `Uri::host` already keeps the brackets.
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(authorization) = proxy.authorization() {
        connect.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
    }
    connect.push_str("\r\n");
    stream.write_all(connect.as_bytes()).await?;

    let bad_answer = || {
        WsError::Io(std::io::Error::other(ProxyError::BadAnswer {
            proxy: proxy.to_string(),
        }))
    };
    // Read up to the blank line and no further: after it, the bytes are the server's.
    let mut answer = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_PROXY_ANSWER || stream.read(&mut byte).await? == 0 {
            return Err(bad_answer());
        }
        answer.push(byte[0]);
    }
    let status = std::str::from_utf8(&answer)
        .ok()
        .and_then(|text| text.strip_prefix("HTTP/1."))
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(bad_answer)?;
    if !(200..300).contains(&status) {
        return Err(WsError::Io(std::io::Error::other(ProxyError::Refused {
            proxy: proxy.to_string(),
            status,
        })));
    }
    log::debug!("tunnel to {target} open through the proxy {proxy}");
    Ok(stream)
}
