//! The one body type bearward passes around: requests and responses stream through it boxed,
//! so a rejection's short text and a streamed upstream body have the same type.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Error type of bodies in flight.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A streaming body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body whose error converts.
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// A complete body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
