//! What a request is made of, checked before any route is looked at: the HTTP/1 framing
//! watched on the socket ([`framing`]), the per-connection request and response accounting
//! both protocols share ([`ledger`]), one valid `Host` ([`host`]) and the one canonical path
//! ([`path`]).

pub mod framing;
pub mod host;
pub mod id;
pub mod ledger;
pub mod path;
