//! API fault bursts waiting for the next calls ([`ApiFaults`]), and the answers they give:
//! a 429 with `Retry-After`, or a 5xx with a gateway's HTML or Genesys's JSON body.

use axum::http::StatusCode;
use axum::response::Response;

use crate::fault::FaultKind;
use crate::wire;

/// One burst of API faults.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Burst {
    RateLimited { retry_after_secs: u64 },
    ServerError { status: u16 },
}

/// API faults waiting for the next calls: bursts in the order they were injected.
#[derive(Debug, Default)]
pub(crate) struct ApiFaults {
    bursts: std::collections::VecDeque<(Burst, u32)>,
}

impl ApiFaults {
    pub(crate) fn push(&mut self, burst: Burst, count: u32) {
        if count > 0 {
            self.bursts.push_back((burst, count));
        }
    }

    /// The response for the next API call, and the kind of fault it is, if a burst is on.
    pub(crate) fn take(&mut self) -> Option<(FaultKind, Response)> {
        let (burst, left) = self.bursts.front_mut()?;
        let burst = *burst;
        *left -= 1;
        if *left == 0 {
            self.bursts.pop_front();
        }
        Some(match burst {
            Burst::RateLimited { retry_after_secs } => (
                FaultKind::RateLimitBurst,
                wire::too_many_requests(retry_after_secs),
            ),
            Burst::ServerError { status } => (FaultKind::ServerErrorBurst, server_error(status)),
        })
    }
}

fn server_error(status: u16) -> Response {
    use axum::response::IntoResponse;
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match status {
        502 | 504 => {
            let reason = code.canonical_reason().unwrap_or("Error");
            let html = format!(
                "<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}</h1></center></body></html>\n"
            );
            (code, axum::response::Html(html)).into_response()
        }
        _ => wire::api_error(
            code,
            "service.unavailable",
            "The service is temporarily unavailable",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_bursts_count_down() {
        let mut api = ApiFaults::default();
        assert!(api.take().is_none());
        api.push(
            Burst::RateLimited {
                retry_after_secs: 4,
            },
            2,
        );
        api.push(Burst::ServerError { status: 502 }, 1);
        api.push(Burst::ServerError { status: 503 }, 0);
        let taken: Vec<(FaultKind, u16)> = std::iter::from_fn(|| api.take())
            .map(|(kind, r)| (kind, r.status().as_u16()))
            .collect();
        assert_eq!(
            taken,
            [
                (FaultKind::RateLimitBurst, 429),
                (FaultKind::RateLimitBurst, 429),
                (FaultKind::ServerErrorBurst, 502)
            ]
        );
    }
}
