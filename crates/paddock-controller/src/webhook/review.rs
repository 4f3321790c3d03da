//! Between the wire and the rules: an `admission.k8s.io/v1` AdmissionReview in (kube's
//! [`kube::core::admission`] types), a [`Verdict`] out as the response review.

use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, ConvertAdmissionReviewError,
};

/// A review as the API server sends it and as we answer it.
pub type Review = AdmissionReview<DynamicObject>;
/// The request inside a [`Review`]; objects stay untyped until a rule parses them, so a
/// malformed object is denied with a message naming the problem rather than rejected whole.
pub type Request = AdmissionRequest<DynamicObject>;

/// What a handler decided.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Allow,
    Deny {
        code: u16,
        message: String,
    },
    /// Allow with these RFC 6902 operations applied.
    Patch(json_patch::Patch),
}

impl Verdict {
    pub fn deny(message: impl Into<String>) -> Self {
        Verdict::Deny {
            code: 403,
            message: message.into(),
        }
    }

    pub fn invalid(errors: Vec<String>) -> Self {
        if errors.is_empty() {
            Verdict::Allow
        } else {
            Verdict::Deny {
                code: 422,
                message: errors.join("; "),
            }
        }
    }
}

/// A body that is not an AdmissionReview with a request; its message is the rejection's.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not an AdmissionReview.
    #[error("malformed AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A review without a request (e.g. a response sent back to us).
    #[error("the AdmissionReview has no request")]
    NoRequest(#[source] ConvertAdmissionReviewError),
}

/// Reads a review body; a body that is not a review with a request gets the error to answer
/// with ([`rejection`]).
pub fn request(body: &[u8]) -> Result<Request, ReviewError> {
    let review: Review = serde_json::from_slice(body).map_err(ReviewError::Malformed)?;
    review.try_into().map_err(ReviewError::NoRequest)
}

/// The (denying) answer to a body [`request`] could not read.
pub fn rejection(error: &ReviewError) -> Review {
    let message = error.to_string();
    tracing::info!(%message, "admission review rejected");
    AdmissionResponse::invalid(message).into_review()
}

/// A review as sent back on the wire. kube's `AdmissionResponse` serialises `patch` (a Go
/// `[]byte`) as an array of numbers (kube-rs/kube#1781); the API documents base64 text, which
/// is what we always sent, so the patch is re-encoded here.
pub fn to_wire(review: &Review) -> serde_json::Value {
    use base64::Engine;
    let mut v = serde_json::to_value(review).unwrap_or_default();
    if let Some(resp) = review.response.as_ref()
        && let Some(patch) = &resp.patch
    {
        v["response"]["patch"] = base64::engine::general_purpose::STANDARD
            .encode(patch)
            .into();
    }
    v
}

/// The response review to `req` carrying `verdict`.
pub fn respond(req: &Request, verdict: Verdict) -> Review {
    let allow = AdmissionResponse::from(req);
    let response = match verdict {
        Verdict::Allow => allow,
        Verdict::Deny { code, message } => {
            tracing::info!(uid = %req.uid, %message, "admission denied");
            let mut denied = allow.deny(message);
            denied.result.code = code;
            denied
        }
        Verdict::Patch(ops) if ops.0.is_empty() => allow,
        Verdict::Patch(ops) => match allow.with_patch(ops) {
            Ok(patched) => patched,
            Err(e) => {
                let mut failed =
                    AdmissionResponse::from(req).deny(format!("encoding the patch: {e}"));
                failed.result.code = 500;
                failed
            }
        },
    };
    response.into_review()
}
