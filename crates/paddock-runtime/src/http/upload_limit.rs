//! Security review H5: a cap on the bytes one `POST /files` request may
//! write, so a client cannot fill the disk the sandbox shares with the host
//! through the runtime. Counted after gzip decoding, so a small compressed
//! body cannot expand past it.

use axum::http::StatusCode;

use crate::errors::HttpError;

/// The request would write more than the cap allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the upload is larger than this sandbox's limit of {max} bytes")]
pub struct TooLarge {
    pub max: u64,
}

impl From<TooLarge> for HttpError {
    fn from(e: TooLarge) -> Self {
        HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
    }
}

/// What is left of one request's allowance.
#[derive(Debug)]
pub struct UploadBudget {
    max: Option<u64>,
    used: u64,
}

impl UploadBudget {
    /// `None` means no cap.
    pub fn new(max: Option<u64>) -> Self {
        Self { max, used: 0 }
    }

    /// Refuses up front a body that says it is too large.
    pub fn check_declared(&self, len: u64) -> Result<(), TooLarge> {
        match self.max {
            Some(max) if len > max => Err(TooLarge { max }),
            _ => Ok(()),
        }
    }

    /// Accounts for `n` more bytes about to be written.
    pub fn take(&mut self, n: usize) -> Result<(), TooLarge> {
        self.used = self.used.saturating_add(n as u64);
        match self.max {
            Some(max) if self.used > max => Err(TooLarge { max }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_inclusive_and_counts_every_file_of_a_request() {
        let mut b = UploadBudget::new(Some(10));
        assert!(b.check_declared(10).is_ok());
        assert_eq!(b.check_declared(11), Err(TooLarge { max: 10 }));
        b.take(6).unwrap();
        b.take(4).unwrap();
        assert_eq!(b.take(1), Err(TooLarge { max: 10 }));
    }

    #[test]
    fn no_cap_takes_anything() {
        let mut b = UploadBudget::new(None);
        assert!(b.check_declared(u64::MAX).is_ok());
        assert!(b.take(usize::MAX).is_ok());
        assert!(b.take(usize::MAX).is_ok());
    }
}
