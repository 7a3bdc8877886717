//! Why a session could not be set up or ended early, with a short label per kind for reports
//! ("failures by reason").

use tunnel_proto::auth_form::AuthFormError;
use tunnel_proto::connect_client::ConnectReplyError;
use tunnel_proto::cstp::FrameError;
use tunnel_proto::http_client::ResponseError;

/// A client failure. [`ClientError::reason`] gives a stable short label for counting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be made (refused, unreachable, no local port).
    #[error("TCP connect to {server} failed: {source}")]
    TcpConnect {
        /// The server address.
        server: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate pin mismatch, protocol error, reset).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    /// Reading or writing the established connection failed.
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection before the exchange was complete.
    #[error("server closed the connection during {stage}")]
    Closed {
        /// What we were waiting for.
        stage: &'static str,
    },
    /// A stage took longer than its deadline.
    #[error("timed out during {stage}")]
    Timeout {
        /// The stage.
        stage: &'static str,
    },
    /// An HTTP response could not be read.
    #[error(transparent)]
    Http(#[from] ResponseError),
    /// The server's auth document could not be used.
    #[error(transparent)]
    AuthForm(#[from] AuthFormError),
    /// The server answered an auth POST with an error status (401: bad credentials).
    #[error("login refused: HTTP {code} {reason}")]
    AuthRefused {
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// The server sent its form again with an error (wrong password, session limit).
    #[error("login failed: {0}")]
    LoginFailed(String),
    /// The login did not end in success within the allowed number of forms.
    #[error("login did not complete after {0} forms")]
    TooManyForms(usize),
    /// Login succeeded but no `webvpn` cookie came.
    #[error("login succeeded without a webvpn cookie")]
    NoCookie,
    /// The CONNECT was refused or its answer is unusable.
    #[error(transparent)]
    Connect(#[from] ConnectReplyError),
    /// A CSTP frame from the server is malformed.
    #[error("bad CSTP frame from server: {0}")]
    Frame(#[from] FrameError),
    /// The server ended the tunnel (DISCONNECT or TERMINATE frame).
    #[error("server ended the tunnel{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Disconnected(Option<String>),
}

impl ClientError {
    /// A short stable label for this kind of failure (`tcp_connect`, `tls`, `auth_refused`, ...).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TcpConnect { .. } => "tcp_connect",
            Self::TlsHandshake(_) => "tls",
            Self::Io(_) => "io",
            Self::Closed { .. } => "closed",
            Self::Timeout { .. } => "timeout",
            Self::Http(_) => "http",
            Self::AuthForm(_) => "auth_form",
            Self::AuthRefused { .. } => "auth_refused",
            Self::LoginFailed(_) => "login_failed",
            Self::TooManyForms(_) => "too_many_forms",
            Self::NoCookie => "no_cookie",
            Self::Connect(ConnectReplyError::Refused { code: 401, .. }) => "connect_401",
            Self::Connect(ConnectReplyError::Refused { code: 503, .. }) => "connect_503",
            Self::Connect(_) => "connect",
            Self::Frame(_) => "frame",
            Self::Disconnected(_) => "disconnected",
        }
    }
}
