//! Proof of possession: a bound token's binding against what the request brings (RFC 8705
//! certificates, RFC 9449 DPoP proofs), and the proof ids seen, in this process and, with a
//! shared store, in every replica.

use super::{dpop, validator, AuthError, Authenticator, Scheme, Trace, Verified};
use std::time::Duration;

/// The DPoP verifier and the proof ids seen.
pub(crate) struct DpopState {
    pub verifier: dpop::Verifier,
    pub(super) replay: dpop::ReplayCache,
}

impl DpopState {
    pub(super) fn new(config: &crate::config::DpopConfig) -> DpopState {
        DpopState {
            replay: dpop::ReplayCache::new(replay_window(config), config.replay_cache_entries),
            verifier: dpop::Verifier::new(config.clone()),
        }
    }
}

/// How long a proof id must be remembered: a proof is accepted while its `iat` is within
/// [now - max_age - leeway, now + leeway], a span of max_age + 2 x leeway.
pub(super) fn replay_window(config: &crate::config::DpopConfig) -> Duration {
    config.max_age + config.leeway * 2
}

/// What a request brings to the binding check of its token.
pub struct BindingRequest<'a> {
    pub scheme: Scheme,
    /// The request's headers, for its `DPoP` proofs.
    pub headers: &'a http::HeaderMap,
    pub method: &'a str,
    /// The request URI as a proof's `htu` must name it (normalized); `None` when it cannot be
    /// known (no Host).
    pub htu: Option<String>,
    pub token: &'a str,
    /// SHA-256 of the client certificate: the connection's verified one, or one a trusted proxy
    /// passed on.
    pub client_cert: Option<[u8; 32]>,
    pub require_bound: bool,
}

impl Authenticator {
    /// The DPoP verifier in force (for challenges' `algs` and nonces).
    pub fn dpop(&self) -> &dpop::Verifier {
        &self.dpop.verifier
    }

    /// The token's binding against what the request brings (RFC 8705 3, RFC 9449 7): a
    /// certificate-bound token only with that certificate; a DPoP-bound token only with the
    /// `DPoP` scheme and a fresh proof by its key; the `DPoP` scheme only with a DPoP-bound
    /// token; and, where the route says so, no unbound token at all.
    pub async fn check_binding(
        &self,
        v: &Verified,
        r: &BindingRequest<'_>,
        trace: &mut Trace,
    ) -> Result<(), AuthError> {
        let b = &v.binding;
        if b.other {
            trace.note("binding", false, || {
                "bound to a key bearward cannot check".into()
            });
            return Err(AuthError::BoundToken);
        }
        if let Some(x5t) = &b.x5t {
            let Some(cert) = r.client_cert else {
                self.metrics.bound_token("certificate_missing");
                trace.note("binding", false, || {
                    "bound to a client certificate; the request came with none".into()
                });
                return Err(AuthError::CertificateMissing);
            };
            let have = base64::Engine::encode(&crate::jose::B64, cert);
            if have != *x5t {
                self.metrics.bound_token("certificate_mismatch");
                trace.note("binding", false, || {
                    format!("bound to certificate x5t#S256={x5t}; the request's is {have}")
                });
                return Err(AuthError::CertificateMismatch);
            }
            self.metrics.bound_token("certificate_ok");
            trace.note("binding", true, || {
                "the client certificate is the one bound".into()
            });
        }
        match (&b.jkt, r.scheme) {
            (Some(_), Scheme::Bearer) => {
                // RFC 9449 7.2: a DPoP-bound token as a bearer token is a downgrade.
                trace.note("binding", false, || {
                    "a DPoP-bound token sent with the Bearer scheme (RFC 9449 7.2)".into()
                });
                return Err(AuthError::BoundToken);
            }
            (None, Scheme::Dpop) => {
                trace.note("binding", false, || {
                    "the DPoP scheme with a token bound to no DPoP key".into()
                });
                return Err(AuthError::DpopUnbound);
            }
            (Some(jkt), Scheme::Dpop) => {
                let checked = self.check_proof(jkt, r);
                if let Err(e) = &checked {
                    self.metrics.dpop_proof(e.reason());
                    trace.note("dpop", false, || e.to_string());
                }
                let id = checked?;
                let recorded = self.record_proof(id).await;
                if let Err(e) = &recorded {
                    trace.note("dpop", false, || e.to_string());
                }
                recorded?;
                self.metrics.dpop_proof("ok");
                self.metrics.bound_token("dpop_ok");
                trace.note("dpop", true, || "a fresh proof by the bound key".into());
            }
            (None, Scheme::Bearer) => {}
        }
        if r.require_bound && !b.is_bound() {
            trace.note("binding", false, || {
                "the route takes sender-constrained tokens only (require_bound_tokens)".into()
            });
            return Err(AuthError::UnboundToken);
        }
        Ok(())
    }

    /// RFC 9449 4.3 on the request's one proof.
    fn check_proof(&self, jkt: &str, r: &BindingRequest<'_>) -> Result<[u8; 32], AuthError> {
        use dpop::ProofError as P;
        let mut proofs = r.headers.get_all("dpop").iter();
        let proof = match (proofs.next(), proofs.next()) {
            (None, _) => return Err(AuthError::DpopProof(P::Missing)),
            (Some(_), Some(_)) => return Err(AuthError::DpopProof(P::Multiple)),
            (Some(p), None) => p.to_str().map_err(|_| AuthError::DpopProof(P::Malformed))?,
        };
        let htu = r.htu.as_deref().ok_or(AuthError::DpopProof(P::Uri))?;
        let req = dpop::Request {
            method: r.method,
            htu,
            access_token: r.token,
            jkt,
        };
        self.dpop
            .verifier
            .check(proof, &req, validator::now())
            .map(|c| c.replay_key)
            .map_err(AuthError::DpopProof)
    }

    /// The proof's id, never seen before: in this process, and with a shared store in every
    /// replica (`SET NX`, so two replicas racing on one replayed proof cannot both take it).
    async fn record_proof(&self, id: [u8; 32]) -> Result<(), AuthError> {
        use dpop::ProofError as P;
        match self.dpop.replay.insert(id) {
            dpop::Seen::New => {}
            dpop::Seen::Replayed => {
                self.metrics.dpop_proof(P::Replayed.reason());
                return Err(AuthError::DpopProof(P::Replayed));
            }
            dpop::Seen::Full => {
                self.metrics.dpop_proof("replay_cache_full");
                tracing::warn!("the DPoP replay cache is full (dpop.replay_cache_entries); new proofs get 503 until the window turns");
                return Err(AuthError::DpopReplayFull);
            }
        }
        let Some(store) = &self.store else {
            return Ok(());
        };
        let key = format!("dpop:{}", crate::jose::hex(&id));
        match store
            .set_nx(&key, replay_window(&self.dpop.verifier.config))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.metrics.dpop_proof(P::Replayed.reason());
                Err(AuthError::DpopProof(P::Replayed))
            }
            Err(e) => match self.dpop.verifier.config.store_down {
                crate::config::StoreDown::Refuse => {
                    self.metrics.dpop_proof("replay_store_down_refused");
                    tracing::warn!(error = %e, "DPoP replay check: the shared store is unavailable; proof refused (dpop_replay_store_down = \"refuse\")");
                    Err(AuthError::DpopReplayUnavailable)
                }
                crate::config::StoreDown::Local => {
                    self.metrics.dpop_proof("replay_store_down_local");
                    tracing::warn!(error = %e, "DPoP replay check: the shared store is unavailable; this process's cache alone decided (dpop_replay_store_down = \"local\")");
                    Ok(())
                }
            },
        }
    }
}
