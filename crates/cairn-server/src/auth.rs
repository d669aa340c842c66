//! Bearer tokens and roles. Tokens are random, shown once, and stored as their
//! SHA-256 hash; a request's token is hashed and looked up, and the stored hash compared in
//! constant time. The caller's identity comes from the token, never from the request body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_store::{StoreError, TokenRow, Tokens};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::AppState;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read plans, events, checkpoints, snapshots, streams.
    Viewer,
    /// Everything a viewer may, and register, control and change plans.
    Operator,
    /// Everything, tokens included.
    Admin,
    /// Remote workers: the task endpoints only.
    Worker,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            "worker" => Role::Worker,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    /// Does this role include `needed`?
    pub fn allows(self, needed: Role) -> bool {
        matches!(
            (self, needed),
            (Role::Admin, _)
                | (Role::Operator, Role::Operator | Role::Viewer)
                | (Role::Viewer, Role::Viewer)
                | (Role::Worker, Role::Worker)
        )
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

impl Principal {
    /// 403 unless the caller's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; {} has {}",
                needed.as_str(),
                self.user,
                self.role.as_str()
            )))
        }
    }
}

/// SHA-256 of a token, hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| StoreError::Backend(format!("no randomness for a token: {e}")))?;
    Ok(hex::encode(buf))
}

/// A token as shown once to its creator.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    pub id: String,
    pub user: String,
    pub role: Role,
    /// The secret: shown now, never again.
    pub token: String,
    pub created_at: cairn_core::Timestamp,
    /// When the token stops being accepted; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<cairn_core::Timestamp>,
}

/// A token as listed (never the secret nor its hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub role: String,
    pub created_at: cairn_core::Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<cairn_core::Timestamp>,
    /// When the token stops being accepted; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<cairn_core::Timestamp>,
}

impl From<TokenRow> for TokenInfo {
    fn from(t: TokenRow) -> Self {
        TokenInfo {
            id: t.id,
            user: t.user,
            role: t.role,
            created_at: cairn_core::Timestamp::from_micros(t.created_at),
            revoked_at: t.revoked_at.map(cairn_core::Timestamp::from_micros),
            expires_at: t.expires_at.map(cairn_core::Timestamp::from_micros),
        }
    }
}

/// Microseconds since the Unix epoch as an RFC 3339 UTC timestamp with microseconds, e.g.
/// `2026-12-02T10:27:49.123456Z`.
pub fn rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Is `user` a name we accept: 1 to 128 printable characters without spaces?
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 128
        && user
            .chars()
            .all(|c| c.is_ascii_graphic() || (c as u32) > 127 && !c.is_whitespace())
}

/// Creates a token in the store (used by `POST /v1/tokens` and `cairn token create`).
pub async fn create_token(
    store: &dyn Tokens,
    user: &str,
    role: Role,
) -> Result<NewToken, StoreError> {
    create_expiring_token(store, user, role, None).await
}

/// Like [`create_token`], for a token refused from `expires_at` (µs since the epoch) on.
pub async fn create_expiring_token(
    store: &dyn Tokens,
    user: &str,
    role: Role,
    expires_at: Option<i64>,
) -> Result<NewToken, StoreError> {
    let token = format!("cairn_{}", random_hex(32)?);
    let id = format!("tok_{}", random_hex(8)?);
    let created_at = cairn_engine::now_micros();
    store
        .create_token(TokenRow {
            id: id.clone(),
            user: user.to_owned(),
            role: role.as_str().to_owned(),
            hash: hash_token(&token),
            created_at,
            revoked_at: None,
            expires_at,
        })
        .await?;
    Ok(NewToken {
        id,
        user: user.to_owned(),
        role,
        token,
        created_at: cairn_core::Timestamp::from_micros(created_at),
        expires_at: expires_at.map(cairn_core::Timestamp::from_micros),
    })
}

/// How long a looked-up token is trusted before the store is asked again. A revocation through
/// the API takes effect at once on the node that made it; on every other node sharing the store,
/// and after `cairn token revoke` on the store, within this time (promised: 5 s, so the cache
/// leaves room for a slow store read).
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// A token as the cache keeps it: who it is, and until when (checked on every use, so the
/// cache never stretches a token's life).
#[derive(Clone)]
struct Known {
    principal: Principal,
    expires_at: Option<i64>,
}

/// Token hash → (principal or refusal, when looked up).
type TokenCache = HashMap<String, (Option<Known>, Instant)>;

/// Resolves tokens to principals, with a short cache so a busy client costs no store read per
/// request.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Tokens>,
    /// `None`: `--no-auth`, everyone is this principal.
    open_as: Option<Principal>,
    cache: Arc<Mutex<TokenCache>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Tokens>) -> Authenticator {
        Authenticator {
            store,
            open_as: None,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// No authentication: every caller is `user` with the admin role.
    pub fn open(store: Arc<dyn Tokens>, user: &str) -> Authenticator {
        Authenticator {
            open_as: Some(Principal {
                user: user.to_owned(),
                role: Role::Admin,
            }),
            ..Authenticator::new(store)
        }
    }

    pub fn forget_all(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    async fn lookup(&self, token: &str) -> Result<Option<Known>, ApiError> {
        let hash = hash_token(token);
        if let Ok(cache) = self.cache.lock() {
            if let Some((p, at)) = cache.get(&hash) {
                if at.elapsed() < CACHE_TTL {
                    return Ok(p.clone());
                }
            }
        }
        let row = self.store.token_by_hash(&hash).await.map_err(|e| {
            tracing::error!(error = %e, "token lookup failed");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "cannot check the token right now",
            )
        })?;
        let principal = row.and_then(|r| {
            let same: bool = r.hash.as_bytes().ct_eq(hash.as_bytes()).into();
            if !same || r.revoked_at.is_some() {
                return None;
            }
            Some(Known {
                principal: Principal {
                    user: r.user,
                    role: Role::parse(&r.role)?,
                },
                expires_at: r.expires_at,
            })
        });
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(hash, (principal.clone(), Instant::now()));
        }
        Ok(principal)
    }

    /// The principal of a request, from its `Authorization: Bearer …` header.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        if let Some(p) = &self.open_as {
            return Ok(p.clone());
        }
        let Some(header) = header else {
            return Err(ApiError::unauthorized(
                "missing Authorization header; send `Authorization: Bearer <token>`",
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        if token.len() > 256 {
            return Err(ApiError::unauthorized("invalid token"));
        }
        let known = self
            .lookup(token)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))?;
        match known.expires_at {
            Some(at) if at <= cairn_engine::now_micros() => Err(ApiError::unauthorized(format!(
                "token expired at {}; ask an admin for a new one",
                rfc3339(at)
            ))),
            _ => Ok(known.principal),
        }
    }
}

/// Middleware: attaches the caller's [`Principal`] to the request, or answers 401.
pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| ws_query_token(&req));
    match state.auth.authenticate(header.as_deref()).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Browsers cannot set headers on a WebSocket: `/v1/ws` alone also takes `?token=<token>`,
/// read as if it came in `Authorization: Bearer <token>`.
fn ws_query_token(req: &Request) -> Option<String> {
    #[derive(Deserialize)]
    struct TokenQuery {
        token: String,
    }
    // Nested under /v1 the router sees `/ws`.
    if !matches!(req.uri().path(), "/ws" | "/v1/ws") {
        return None;
    }
    let q = axum::extract::Query::<TokenQuery>::try_from_uri(req.uri()).ok()?;
    Some(format!("Bearer {}", q.0.token))
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_is_utc_with_microseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            rfc3339(1_796_209_000_267_116),
            "2026-12-02T10:56:40.267116Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999Z");
    }
}
