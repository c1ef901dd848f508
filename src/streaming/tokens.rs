//! Pending streaming requests. `Exec`, `Attach` and `PortForward` over CRI only hand out a URL
//! holding a token; the request itself waits here until the client connects to that URL.
//!
//! A token is the only credential the streaming server sees, so it is unguessable (256 random
//! bits), good for one connection, and short-lived; the store is bounded so that a caller
//! cannot pile up requests that are never used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

/// How long a token stays valid, as Kubernetes' streaming server does.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How many tokens may wait at once, as Kubernetes' streaming server does.
pub const MAX_PENDING: usize = 1000;

/// Random bytes per token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Attach {
        container_id: String,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        pod_id: String,
        ports: Vec<u16>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("too many streaming requests in flight (at most {capacity}); try again later")]
    Full { capacity: usize },
    #[error("the system random number generator failed")]
    Random,
}

/// The clock the store reads; injectable so that tests need not sleep.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Pending requests by token. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct TokenStore {
    pending: Mutex<HashMap<String, Pending>>,
    ttl: Duration,
    capacity: usize,
    clock: Clock,
    rng: SystemRandom,
}

struct Pending {
    request: StreamRequest,
    expires: Instant,
}

impl Default for TokenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves: they are credentials.
        f.debug_struct("TokenStore")
            .field("pending", &self.len())
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl TokenStore {
    /// A store with [`TOKEN_TTL`] and [`MAX_PENDING`] on the system's monotonic clock.
    pub fn new() -> Self {
        Self::with_clock(TOKEN_TTL, MAX_PENDING, Arc::new(Instant::now))
    }

    pub fn with_clock(ttl: Duration, capacity: usize, clock: Clock) -> Self {
        TokenStore {
            pending: Mutex::new(HashMap::new()),
            ttl,
            capacity,
            clock,
            rng: SystemRandom::new(),
        }
    }

    /// Stores `request` and returns its token: 32 random bytes, URL-safe base64 without
    /// padding, so it can go into a URL path as is.
    pub fn insert(&self, request: StreamRequest) -> Result<String, TokenError> {
        let mut raw = [0u8; TOKEN_BYTES];
        self.rng.fill(&mut raw).map_err(|_| TokenError::Random)?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = (self.clock)();
        let mut pending = self.lock();
        // Expired entries are only dropped here: the bound is what matters, not promptness.
        if pending.len() >= self.capacity {
            pending.retain(|_, p| p.expires > now);
        }
        if pending.len() >= self.capacity {
            return Err(TokenError::Full {
                capacity: self.capacity,
            });
        }
        pending.insert(
            token.clone(),
            Pending {
                request,
                expires: now + self.ttl,
            },
        );
        Ok(token)
    }

    /// The request behind `token`, at most once; `None` for an unknown, used or expired token.
    pub fn take(&self, token: &str) -> Option<StreamRequest> {
        let now = (self.clock)();
        let pending = self.lock().remove(token)?;
        (pending.expires > now).then_some(pending.request)
    }

    /// Tokens held, expired or not.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn exec() -> StreamRequest {
        StreamRequest::Exec {
            container_id: "c1".into(),
            cmd: vec!["sh".into(), "-c".into(), "true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        }
    }

    /// A clock the test moves by hand.
    fn manual_clock() -> (Clock, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    #[test]
    fn tokens_are_url_safe_and_distinct() {
        let store = TokenStore::new();
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let token = store.insert(exec()).unwrap();
            assert_eq!(token.len(), 43, "{token}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert!(seen.insert(token));
        }
    }

    #[test]
    fn a_token_is_single_use() {
        let store = TokenStore::new();
        let pf = StreamRequest::PortForward {
            pod_id: "p".into(),
            ports: vec![80, 443],
        };
        let token = store.insert(pf.clone()).unwrap();
        assert_eq!(store.take("not-a-token"), None);
        assert_eq!(store.take(&token), Some(pf));
        assert_eq!(store.take(&token), None);
        assert!(store.is_empty());
    }

    #[test]
    fn a_token_expires() {
        let (clock, now) = manual_clock();
        let store = TokenStore::with_clock(TOKEN_TTL, 10, clock);
        let early = store.insert(exec()).unwrap();
        let late = store.insert(exec()).unwrap();
        *now.lock().unwrap() += TOKEN_TTL - Duration::from_millis(1);
        assert_eq!(store.take(&early), Some(exec()));
        *now.lock().unwrap() += Duration::from_millis(1);
        assert_eq!(store.take(&late), None);
        // Taking an expired token still drops it.
        assert!(store.is_empty());
    }

    #[test]
    fn the_store_is_bounded_and_expired_tokens_make_room() {
        let (clock, now) = manual_clock();
        let store = TokenStore::with_clock(TOKEN_TTL, 3, clock);
        let first = store.insert(exec()).unwrap();
        *now.lock().unwrap() += Duration::from_secs(30);
        let second = store.insert(exec()).unwrap();
        store.insert(exec()).unwrap();
        assert_eq!(store.insert(exec()), Err(TokenError::Full { capacity: 3 }));
        // Using a token frees its place.
        assert!(store.take(&second).is_some());
        store.insert(exec()).unwrap();
        assert!(store.insert(exec()).is_err());
        // Once the first expires, it makes room.
        *now.lock().unwrap() += Duration::from_secs(31);
        store.insert(exec()).unwrap();
        assert_eq!(store.len(), 3);
        assert_eq!(store.take(&first), None);
    }

    #[test]
    fn debug_output_does_not_show_tokens() {
        let store = TokenStore::new();
        let token = store.insert(exec()).unwrap();
        let shown = format!("{store:?}");
        assert!(!shown.contains(&token), "{shown}");
        assert!(shown.contains("pending: 1"), "{shown}");
    }
}
