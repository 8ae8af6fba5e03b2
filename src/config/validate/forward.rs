//! `[forward]`: what the upstream is told about the caller.

use super::*;

pub(super) fn forward(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<crate::config::file::ForwardFile>>,
    request_id: Option<&HeaderName>,
) -> ForwardConfig {
    let Some(f) = f else {
        return ForwardConfig::default();
    };
    let f = f.get_ref();
    // The headers bearward writes or filters for another purpose: a token header of one of
    // these names would fight it (the request id, a forwarded address).
    let managed = |h: &HeaderName| crate::headers::is_managed(h) || request_id == Some(h);
    let mut claim_headers = Vec::new();
    if let Some(map) = &f.claim_headers {
        for (claim, header) in map.get_ref() {
            let key = format!("forward.claim_headers.{claim}");
            match HeaderName::from_str(header.get_ref()) {
                Ok(h) if managed(&h) => cx.err(
                    header.span(),
                    &key,
                    format!("{:?} is a header bearward manages itself", header.get_ref()),
                ),
                Ok(h) => claim_headers.push((claim.clone(), h)),
                Err(_) => cx.err(
                    header.span(),
                    &key,
                    format!("{:?} is not a valid header name", header.get_ref()),
                ),
            }
        }
    }
    let payload_header = f.payload_header.as_ref().and_then(|header| {
        let key = "forward.payload_header";
        let problem = match HeaderName::from_str(header.get_ref()) {
            Ok(h) if managed(&h) => {
                format!("{:?} is a header bearward manages itself", header.get_ref())
            }
            Ok(h) if claim_headers.iter().any(|(_, c)| *c == h) => {
                format!("{:?} is a claim header too", header.get_ref())
            }
            Ok(h) => return Some(h),
            Err(_) => format!("{:?} is not a valid header name", header.get_ref()),
        };
        cx.err(header.span(), key, problem);
        None
    });
    ForwardConfig {
        claim_headers,
        payload_header,
        strip_authorization: f.strip_authorization.unwrap_or(false),
    }
}
