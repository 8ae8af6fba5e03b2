//! `[forward]`: what the upstream is told about the caller.

use super::*;

pub(super) fn forward(
    cx: &mut Ctx<'_>,
    f: Option<&Spanned<crate::config::file::ForwardFile>>,
) -> ForwardConfig {
    let Some(f) = f else {
        return ForwardConfig::default();
    };
    let f = f.get_ref();
    let mut claim_headers = Vec::new();
    if let Some(map) = &f.claim_headers {
        for (claim, header) in map.get_ref() {
            let key = format!("forward.claim_headers.{claim}");
            match HeaderName::from_str(header.get_ref()) {
                Ok(h) if crate::headers::is_reserved_header(&h) => cx.err(
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
    ForwardConfig {
        claim_headers,
        strip_authorization: f.strip_authorization.unwrap_or(false),
    }
}
