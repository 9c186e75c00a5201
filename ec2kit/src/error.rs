//! Errors of the EC2 seam.
//!
//! EC2 errors are unmodeled in aws-sdk-ec2: the only reliable information is
//! the error *code* string (`InvalidSnapshot.InUse`, `RequestLimitExceeded`,
//! ...). [`Ec2Error`] keeps that code, classifies it once into an
//! [`ErrorKind`], and says whether retrying can help.

use std::error::Error as StdError;

use crate::action::Action;

/// A boxed error source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What kind of failure an EC2 call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The API's rate limit was hit (`RequestLimitExceeded` and friends).
    Throttled,
    /// A resource was not found (`*.NotFound`).
    NotFound,
    /// A resource is in use, e.g. a snapshot backing an AMI (`InvalidSnapshot.InUse`).
    InUse,
    /// A concurrency limit that frees up by itself, e.g. 20 copies in flight
    /// per destination region (`ResourceLimitExceeded`).
    ConcurrencyLimit,
    /// A hard quota (`SnapshotLimitExceeded`, `VolumeLimitExceeded`, ...).
    QuotaExceeded,
    /// The credentials are not allowed to do this.
    AccessDenied,
    /// No usable credentials: none found, expired, or not valid for the
    /// account (`AuthFailure`, `ExpiredToken`, ...). Retrying cannot help.
    Credentials,
    /// A `DryRun` request that *would have succeeded* (`DryRunOperation`).
    DryRunOk,
    /// The request was malformed or had invalid parameters.
    InvalidRequest,
    /// EC2 itself failed (5xx, `InternalError`, `Unavailable`).
    ServerError,
    /// The request never got an answer: connection, DNS or timeout.
    Transport,
    /// Any other error code.
    Other,
}

impl ErrorKind {
    /// Classifies an EC2 error code.
    pub fn from_code(code: &str) -> Self {
        match code {
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "SnapshotCreationPerVolumeRateExceeded" => Self::Throttled,
            "ResourceLimitExceeded"
            | "ConcurrentSnapshotLimitExceeded"
            | "ConcurrentTagAccess"
            | "IncorrectState"
            | "PendingSnapshotLimitExceeded" => Self::ConcurrencyLimit,
            "SnapshotLimitExceeded"
            | "VolumeLimitExceeded"
            | "InstanceLimitExceeded"
            | "AmiQuotaExceeded"
            | "MaxSpotInstanceCountExceeded"
            | "TagLimitExceeded" => Self::QuotaExceeded,
            "UnauthorizedOperation"
            | "AccessDenied"
            | "AccessDeniedException"
            | "OptInRequired"
            | "Blocked" => Self::AccessDenied,
            "AuthFailure"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "ExpiredToken"
            | "ExpiredTokenException" => Self::Credentials,
            "DryRunOperation" => Self::DryRunOk,
            "InternalError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "Unavailable"
            | "InsufficientInstanceCapacity" => Self::ServerError,
            c if c.ends_with("NotFound") || c == "NotFoundException" => Self::NotFound,
            c if c.ends_with(".InUse") || c == "VolumeInUse" => Self::InUse,
            c if c.starts_with("Invalid")
                || c.starts_with("Missing")
                || c.ends_with(".Malformed")
                || c == "ValidationError" =>
            {
                Self::InvalidRequest
            }
            _ => Self::Other,
        }
    }

    /// Whether the same call may succeed if simply repeated later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::ConcurrencyLimit | Self::ServerError | Self::Transport
        )
    }
}

/// A failed EC2 call, or a request rejected before it was sent.
#[derive(Debug, thiserror::Error)]
#[error("{action} in {region}: {}", describe(self))]
#[non_exhaustive]
pub struct Ec2Error {
    /// The EC2 action that failed.
    pub action: Action,
    /// The region it was sent to.
    pub region: String,
    /// The classified kind.
    pub kind: ErrorKind,
    /// The EC2 error code, when EC2 answered with one.
    pub code: Option<String>,
    /// EC2's own message, when there is one.
    pub message: Option<String>,
    /// The underlying error (SDK, transport).
    #[source]
    pub source: Option<BoxError>,
}

fn describe(e: &Ec2Error) -> String {
    match (&e.code, &e.message) {
        (Some(c), Some(m)) if !m.is_empty() => format!("{c}: {m}"),
        (Some(c), _) => c.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => match e.kind {
            ErrorKind::Transport => "no answer from the endpoint".to_owned(),
            _ => "request failed".to_owned(),
        },
    }
}

impl Ec2Error {
    /// An error from an EC2 error code and message.
    pub fn from_code(
        action: Action,
        region: impl Into<String>,
        code: impl Into<String>,
        message: Option<String>,
    ) -> Self {
        let code = code.into();
        Self {
            action,
            region: region.into(),
            kind: ErrorKind::from_code(&code),
            code: Some(code),
            message,
            source: None,
        }
    }

    /// An error of a given kind with no EC2 code (transport failures, invalid input).
    pub fn new(
        action: Action,
        region: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            action,
            region: region.into(),
            kind,
            code: None,
            message: Some(message.into()),
            source: None,
        }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The EC2 error code, if any.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Whether the same call may succeed if simply repeated later.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Whether this is EC2's answer to a `DryRun` request that would have succeeded.
    pub fn is_dry_run_ok(&self) -> bool {
        self.kind == ErrorKind::DryRunOk
    }
}

/// Turns the result of a `DryRun` call into `Ok(None)` when EC2 said the
/// real call would have succeeded, so callers treat "would succeed" as success.
pub fn dry_run_ok<T>(result: Result<T, Ec2Error>) -> Result<Option<T>, Ec2Error> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_dry_run_ok() => Ok(None),
        Err(e) => Err(e),
    }
}

/// An error and its causes on one line, `: `-separated; a cause whose
/// text the line already holds (SDK errors often repeat themselves one
/// level down) is left out. For reports that keep one string per item.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes() {
        use ErrorKind::*;
        let cases = [
            ("RequestLimitExceeded", Throttled),
            ("InvalidSnapshot.InUse", InUse),
            ("InvalidSnapshot.NotFound", NotFound),
            ("InvalidInstanceID.NotFound", NotFound),
            ("InvalidVolume.NotFound", NotFound),
            ("ResourceLimitExceeded", ConcurrencyLimit),
            ("SnapshotLimitExceeded", QuotaExceeded),
            ("UnauthorizedOperation", AccessDenied),
            ("AuthFailure", Credentials),
            ("ExpiredToken", Credentials),
            ("DryRunOperation", DryRunOk),
            ("InvalidParameterValue", InvalidRequest),
            ("InvalidSnapshotID.Malformed", InvalidRequest),
            ("InternalError", ServerError),
            ("SomethingNew", Other),
        ];
        for (code, kind) in cases {
            assert_eq!(ErrorKind::from_code(code), kind, "{code}");
        }
    }

    #[test]
    fn retryable_only_for_transient_kinds() {
        assert!(
            Ec2Error::from_code(
                Action::DeleteSnapshot,
                "us-east-1",
                "RequestLimitExceeded",
                None
            )
            .is_retryable()
        );
        assert!(
            Ec2Error::from_code(
                Action::CopySnapshot,
                "us-east-1",
                "ResourceLimitExceeded",
                None
            )
            .is_retryable()
        );
        assert!(
            !Ec2Error::from_code(
                Action::DeleteSnapshot,
                "us-east-1",
                "InvalidSnapshot.InUse",
                None
            )
            .is_retryable()
        );
        assert!(
            !Ec2Error::from_code(
                Action::DeleteSnapshot,
                "us-east-1",
                "UnauthorizedOperation",
                None
            )
            .is_retryable()
        );
    }

    #[test]
    fn message_keeps_action_region_code_and_text() {
        let e = Ec2Error::from_code(
            Action::DeleteSnapshot,
            "eu-west-1",
            "InvalidSnapshot.InUse",
            Some("The snapshot snap-1 is currently in use by ami-1".into()),
        );
        assert_eq!(
            e.to_string(),
            "DeleteSnapshot in eu-west-1: InvalidSnapshot.InUse: The snapshot snap-1 is currently in use by ami-1"
        );
    }

    #[test]
    fn dry_run_ok_maps_to_none() {
        let r: Result<u8, _> = Err(Ec2Error::from_code(
            Action::RebootInstances,
            "r",
            "DryRunOperation",
            None,
        ));
        assert!(matches!(dry_run_ok(r), Ok(None)));
        let r: Result<u8, _> = Err(Ec2Error::from_code(
            Action::RebootInstances,
            "r",
            "UnauthorizedOperation",
            None,
        ));
        assert!(dry_run_ok(r).is_err());
    }
}
