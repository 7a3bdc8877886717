//! The daemon's configuration file (`tunneld.toml`): its types, their embedded defaults, and the
//! validation that turns a mistyped or inconsistent file into a list of operator-readable errors.
//!
//! Every field has a default, so an empty file (or [`Config::default()`]) is a valid, runnable
//! configuration. Every table rejects unknown keys, so a misspelled key is an error rather than a
//! silently ignored setting. Durations are whole seconds in fields ending in `_secs`.
//!
//! Parsing ([`Config::from_toml_str`], [`Config::load`]) stops at the first syntax or type error,
//! because that is what the TOML parser can report; [`Config::validate`] then checks the values
//! and reports **every** problem at once, each with its dotted field path.
//!
//! `config/tunneld.toml` in the repository documents every field; a unit test keeps it in step
//! with these types.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole daemon configuration, one field per TOML table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listener, state directory, limits and what the server tells clients.
    pub server: ServerConfig,
    /// `[tls]`: where the server certificate comes from, and the lowest TLS version accepted.
    pub tls: TlsConfig,
    /// `[network]`: address pools, routes and DNS pushed to clients, and the TUN device.
    pub network: NetworkConfig,
    /// `[timers]`: dead-peer detection, keepalive and the session/cookie/auth time limits.
    pub timers: TimerConfig,
    /// `[auth]`: where users and their password hashes live.
    pub auth: AuthConfig,
    /// `[metrics]`: the Prometheus metrics listener.
    pub metrics: MetricsConfig,
    /// `[dtls]`: the UDP (DTLS) data channel beside TLS.
    pub dtls: DtlsConfig,
    /// `[control]`: the operator's control socket (`tunnelctl`).
    pub control: ControlConfig,
    /// `[ban]`: brute-force protection (per-source failure scores and bans).
    pub ban: BanConfig,
}

/// `[server]`: the TLS listener and the server-wide limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and TCP port the TLS listener binds. Default `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// Directory for state the daemon creates itself (the self-signed certificate when none is
    /// configured, the saved bans). Default `/var/lib/tunneld`.
    pub state_dir: PathBuf,
    /// HTTP path answered with the health page (for load balancers). Must start with `/` and must
    /// not collide with the paths the VPN protocol uses (`/`, `/auth`, `/CSCOSSLC/...`,
    /// `/+CSCO...`). Default `/health`.
    pub health_path: String,
    /// Maximum number of established sessions across all users. Default 64000.
    pub max_sessions: u32,
    /// Maximum number of established sessions one user may hold; 0 means unlimited (default).
    pub max_sessions_per_user: u32,
    /// Message shown to the user after login (one line; no control characters). Default none.
    pub banner: Option<String>,
    /// Host name clients use to reach the server; used as CN/SAN of the self-signed certificate.
    /// Default none (the machine's host name is used where a name is needed).
    pub server_name: Option<String>,
    /// Largest HTTP request head (request line plus headers), in bytes, accepted before the
    /// connection is refused. Default 8192.
    pub max_header_bytes: usize,
    /// Maximum number of connections from one source address that have not yet authenticated;
    /// 0 turns the limit off (default).
    pub max_unauthenticated_per_source: u32,
    /// Data-plane threads (see [`crate::workers`]): each has its own runtime, TLS listener and TUN
    /// queue, and keeps the sessions it accepted. 0 (default) runs one per CPU. At most 1024.
    pub threads: u32,
    /// Gives each data-plane thread its own file table, so that one process holds more sessions
    /// than its open-files limit (see [`crate::workers`]). Default false: on a real host, raise
    /// `LimitNOFILE=` instead.
    pub private_file_tables: bool,
    /// Receive coalescing (see [`crate::coalesce`]): a data-plane thread that keeps being woken
    /// right after it parked sleeps this many microseconds before it waits again, and handles
    /// what arrived meanwhile in one batch. Adds up to this much latency under sustained traffic
    /// only. 0 turns it off. Default 100, at most 1000.
    pub rx_coalesce_usecs: u32,
    /// Unprivileged user the daemon switches to once the TUN device, forwarding, NAT and the
    /// listeners are set up, keeping only `CAP_NET_ADMIN` and `CAP_NET_BIND_SERVICE` (see
    /// [`crate::privdrop`]). Default none: keep running as the user that started it.
    pub user: Option<String>,
}

/// The most data-plane threads `server.threads` may ask for.
const MAX_THREADS: u32 = 1024;

/// The longest nap `server.rx_coalesce_usecs` may ask for.
const MAX_RX_COALESCE_USECS: u32 = 1000;

impl ServerConfig {
    /// How many data-plane threads run: `threads`, or one per CPU this process may use (which
    /// honours a container's CPU quota) when it is 0.
    #[must_use]
    pub fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n as usize,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 443)),
            state_dir: PathBuf::from("/var/lib/tunneld"),
            health_path: "/health".to_owned(),
            max_sessions: 64000,
            max_sessions_per_user: 0,
            banner: None,
            server_name: None,
            max_header_bytes: 8192,
            max_unauthenticated_per_source: 0,
            threads: 0,
            private_file_tables: false,
            rx_coalesce_usecs: 100,
            user: None,
        }
    }
}

/// A TLS protocol version, as written in `tls.min_version`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum TlsVersion {
    /// TLS 1.2 (`"1.2"`), the default minimum: the server then accepts TLS 1.2 and TLS 1.3.
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 (`"1.3"`): the server accepts TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        })
    }
}

/// `[tls]`: the server certificate source and the minimum TLS version.
///
/// Exactly one source is used: `cert` + `key` (PEM), or `pfx` (PKCS#12), or, when neither is set,
/// a self-signed certificate generated once in `server.state_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by any intermediate certificates.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key for `cert` (PKCS#8, PKCS#1 RSA or SEC1 EC; unencrypted).
    pub key: Option<PathBuf>,
    /// PKCS#12 (`.pfx`/`.p12`) file holding the key, the certificate and any intermediates.
    pub pfx: Option<PathBuf>,
    /// Password of `pfx`, inline. Prefer `pfx_password_file`.
    pub pfx_password: Option<String>,
    /// File whose content (without a trailing newline) is the password of `pfx`.
    pub pfx_password_file: Option<PathBuf>,
    /// Lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: TlsVersion,
    /// Cipher suites offered, most preferred first (the server's order wins over the client's).
    /// Empty (default) means [`crate::tls::DEFAULT_CIPHER_SUITES`].
    pub cipher_suites: Vec<String>,
}

/// `[network]`: what clients are given (addresses, routes, DNS) and the TUN device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// IPv4 client address pool. The first host address is the gateway's own address on the
    /// TUN device; the rest (minus network and broadcast) are handed to clients.
    /// Default `192.168.100.0/24`.
    pub ipv4_pool: Ipv4Net,
    /// IPv6 client address pool; default none (IPv4 only). Prefix length must be /64 to /120 and
    /// leave at least as many addresses as the IPv4 pool. The first address after the network
    /// address is the gateway's own.
    pub ipv6_pool: Option<Ipv6Net>,
    /// DNS servers pushed to clients. Default none.
    pub dns: Vec<IpAddr>,
    /// Default DNS search domain pushed to clients. Default none.
    pub default_domain: Option<String>,
    /// Domains resolved through the tunnel's DNS servers when split DNS is used. Default none.
    pub split_dns: Vec<String>,
    /// Routes sent through the tunnel. Empty (default) means all traffic goes through the tunnel.
    pub split_include: Vec<IpNet>,
    /// Routes kept off the tunnel. Default none.
    pub split_exclude: Vec<IpNet>,
    /// MTU of the tunnel (the inner packets), in bytes: 576..=9000. Default 1400.
    pub mtu: u32,
    /// MTU of the path to clients (the outer packets), in bytes. Default 1500.
    pub link_mtu: u32,
    /// Name of the TUN device the daemon creates: at most 15 of `[A-Za-z0-9_.-]`.
    /// Default `tunneld0`.
    pub tun_name: String,
    /// Masquerade (source-NAT) client traffic leaving the gateway. Default false.
    pub nat: bool,
    /// Interface to masquerade on when `nat` is true; default none (the interface of the default
    /// route). Ignored when `nat` is false.
    pub nat_interface: Option<String>,
    /// Packets queued per session towards the client before further packets are dropped.
    /// Default 256.
    pub queue_len: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            ipv4_pool: Ipv4Net::new(Ipv4Addr::new(192, 168, 100, 0), 24)
                .unwrap_or_else(|_| Ipv4Net::default()),
            ipv6_pool: None,
            dns: Vec::new(),
            default_domain: None,
            split_dns: Vec::new(),
            split_include: Vec::new(),
            split_exclude: Vec::new(),
            mtu: 1400,
            link_mtu: 1500,
            tun_name: "tunneld0".to_owned(),
            nat: false,
            nat_interface: None,
            queue_len: 256,
        }
    }
}

impl NetworkConfig {
    /// The gateway's own IPv4 address on the TUN device: the first host address of `ipv4_pool`
    /// (`192.168.100.1` for the default pool). Never handed to a client.
    pub fn gateway_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ipv4_pool.network()).saturating_add(1))
    }

    /// The gateway's own IPv6 address on the TUN device, when an IPv6 pool is configured: the
    /// network address plus one (`fd00::1` for `fd00::/64`). Never handed to a client.
    pub fn gateway_ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6_pool
            .map(|p| Ipv6Addr::from(u128::from(p.network()).saturating_add(1)))
    }
}

/// `[timers]`: all in whole seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimerConfig {
    /// Dead-peer-detection interval proposed to clients, seconds (≥ 1). Default 90.
    pub dpd_secs: u32,
    /// Keepalive interval proposed to clients, seconds (≥ 1). Default 32.
    pub keepalive_secs: u32,
    /// Disconnect a session after this many seconds without traffic; 0 = never (default).
    pub idle_timeout_secs: u32,
    /// Disconnect a session this many seconds after it was established; 0 = never (default).
    pub session_timeout_secs: u32,
    /// How long a session cookie stays valid for reconnecting after the connection drops,
    /// seconds (≥ 1). Default 300.
    pub cookie_timeout_secs: u32,
    /// Time a client has to complete authentication on a connection, seconds (≥ 1). Default 30.
    pub auth_timeout_secs: u32,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            dpd_secs: 90,
            keepalive_secs: 32,
            idle_timeout_secs: 0,
            session_timeout_secs: 0,
            cookie_timeout_secs: 300,
            auth_timeout_secs: 30,
        }
    }
}

/// `[auth]`: how clients prove who they are, and the user database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `"password"` (default: username and password checked against `users_file`) or
    /// `"certificate"` (a client certificate issued by `ca_file`; see [`crate::client_cert`]).
    pub method: AuthMethod,
    /// The users file (`ocpasswd` format, see [`crate::users`]). Default `/etc/tunneld/users`.
    /// With `method = "certificate"` it is optional: it locks users out and gives their group.
    pub users_file: PathBuf,
    /// PEM bundle of the CA certificates that issue client (device) certificates. Required with
    /// `method = "certificate"`, refused otherwise.
    pub ca_file: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) of those CAs; a certificate listed in one is
    /// refused. Only with `method = "certificate"`.
    pub crl_files: Vec<PathBuf>,
    /// Which field of the client certificate is the username: `"cn"` (default), `"uid"` or
    /// `"email"`.
    pub cert_username: CertUsername,
    /// A certificate session's cookie works only on a connection that presents the same
    /// certificate. Off by default: NetworkManager-openconnect connects with the cookie alone.
    /// Only with `method = "certificate"`.
    pub bind_cookie_to_certificate: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            method: AuthMethod::default(),
            users_file: PathBuf::from("/etc/tunneld/users"),
            ca_file: None,
            crl_files: Vec::new(),
            cert_username: CertUsername::default(),
            bind_cookie_to_certificate: false,
        }
    }
}

/// How clients authenticate, as written in `auth.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// Username and password from the login form, checked against the users file.
    #[default]
    Password,
    /// A client certificate that chains to `auth.ca_file`; no password is asked.
    Certificate,
}

/// The client-certificate field that names the user, as written in `auth.cert_username`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertUsername {
    /// The subject's commonName (OID 2.5.4.3), as ocserv's `cert-user-oid = 2.5.4.3`.
    #[default]
    Cn,
    /// The subject's userId (OID 0.9.2342.19200300.100.1.1), as ocserv's default `cert-user-oid`.
    Uid,
    /// The first rfc822Name of the subjectAltName, else the subject's emailAddress.
    Email,
}

/// `[dtls]`: the DTLS 1.2 (PSK-NEGOTIATE) data channel on UDP, on the address and port of
/// `server.listen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DtlsConfig {
    /// Offer DTLS to clients that ask for it (openconnect does unless `--no-dtls`). Default true.
    pub enabled: bool,
    /// Seconds without any valid DTLS record from a client after which the gateway sends that
    /// client's traffic over TLS again (ocserv's `switch-to-tcp-timeout`), at least 1. Default 25.
    pub switch_to_tcp_secs: u32,
    /// Give each established DTLS channel its own UDP socket, bound to the listen port and
    /// connected to the client, so the kernel hands each session its datagrams (as ocserv does).
    /// Costs one open file per DTLS session. False: every session shares the listening socket and
    /// one task sorts its datagrams. Default true.
    pub socket_per_session: bool,
}

impl Default for DtlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            switch_to_tcp_secs: 25,
            socket_per_session: true,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the plain-HTTP metrics listener. Default `Some(127.0.0.1:9477)`. In TOML,
    /// `listen = "off"` (or `""`) sets `None`, which disables the listener.
    #[serde(
        serialize_with = "serialize_optional_listen",
        deserialize_with = "deserialize_optional_listen"
    )]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9477))),
        }
    }
}

/// `[control]`: the Unix socket `tunnelctl` talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Path of the control socket (mode 0600, root only). Default
    /// `Some("/run/tunneld/control.sock")`. In TOML, `socket = "off"` (or `""`) sets `None`, which
    /// disables the socket (and with it `tunnelctl status`, `sessions`, `disconnect`, `ban` and
    /// `reload`; SIGHUP still reloads).
    #[serde(
        serialize_with = "serialize_optional_path",
        deserialize_with = "deserialize_optional_path"
    )]
    pub socket: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: Some(PathBuf::from("/run/tunneld/control.sock")),
        }
    }
}

/// `[ban]`: each source address collects points for failed logins; at `max_score` it is banned
/// for `ban_secs` (its connections are closed at TCP accept, before the TLS handshake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BanConfig {
    /// Score at which a source address is banned; 0 turns automatic bans off. Default 100.
    pub max_score: u32,
    /// Points added for each failed login (wrong password, unknown or locked user) and each
    /// CONNECT with an unknown cookie. Default 10 (so ten failures reach the default
    /// `max_score`).
    pub auth_failure_points: u32,
    /// How long an automatic ban lasts, seconds (at least 1). Default 300.
    pub ban_secs: u32,
    /// A score is forgotten after this many seconds without a new failure (at least 1).
    /// Default 1200.
    pub score_reset_secs: u32,
}

impl Default for BanConfig {
    fn default() -> Self {
        Self {
            max_score: 100,
            auth_failure_points: 10,
            ban_secs: 300,
            score_reset_secs: 1200,
        }
    }
}

/// Serializes `None` as `"off"`.
fn serialize_optional_path<S: Serializer>(
    value: &Option<PathBuf>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(p) => serializer.collect_str(&p.display()),
        None => serializer.serialize_str("off"),
    }
}

/// Accepts a path, or `"off"`/`""` for `None`.
fn deserialize_optional_path<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(deserializer)?;
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(t)))
}

/// Serializes `None` as `"off"`, the TOML spelling that turns the metrics listener off.
fn serialize_optional_listen<S: Serializer>(
    value: &Option<SocketAddr>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(addr) => serializer.collect_str(addr),
        None => serializer.serialize_str("off"),
    }
}

/// Accepts a socket address, or `"off"`/`""` for `None`.
fn deserialize_optional_listen<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(deserializer)?;
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid metrics listen address {s:?}: expected \"IP:PORT\" (e.g. \"127.0.0.1:9477\") or \"off\""
        ))
    })
}

/// One validation problem: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `network.split_include[2]`.
    pub field: String,
    /// What is wrong, and where useful what would be accepted.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read (missing, permissions, ...).
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type, or a key is unknown. The
    /// message comes from the TOML parser and shows the line, the column and the key.
    #[error("{}{message}", match path { Some(p) => format!("cannot parse configuration file {}: ", p.display()), None => "cannot parse configuration: ".to_owned() })]
    Parse {
        /// The file that was parsed, when parsing came from a file.
        path: Option<PathBuf>,
        /// The parser's description of the first error.
        message: String,
    },
    /// The file parsed but some values are unusable; every problem found is listed.
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, DisplayList(.0))]
    Invalid(Vec<FieldError>),
}

/// Formats field errors one per line, indented.
struct DisplayList<'a>(&'a [FieldError]);

impl fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Parses a TOML document and validates it.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_toml(s, None)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates the configuration file at `path`. Certificate and users files
    /// named in it are not read here (see [`crate::tls::load_certificate`] and
    /// [`crate::users::UserDb::load`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::parse_toml(&text, Some(path))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses without validating.
    fn parse_toml(s: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        toml::from_str(s).map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.map(Path::to_owned),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Checks every value and every combination of values, and reports all problems at once as
    /// [`ConfigError::Invalid`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        self.validate_server(&mut v);
        self.validate_tls(&mut v);
        self.validate_network(&mut v);
        self.validate_timers(&mut v);
        self.validate_other(&mut v);
        self.validate_ops(&mut v);
        if v.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(v.errors))
        }
    }

    fn validate_server(&self, v: &mut Validator) {
        let s = &self.server;
        if s.state_dir.as_os_str().is_empty() {
            v.err("server.state_dir", "must not be empty");
        }
        check_health_path(v, &s.health_path);
        if s.max_sessions == 0 {
            v.err("server.max_sessions", "must be at least 1");
        }
        if let Some(banner) = &s.banner {
            check_text(v, "server.banner", banner, 4096);
        }
        if let Some(name) = &s.server_name {
            check_server_name(v, name);
        }
        if s.threads > MAX_THREADS {
            v.err(
                "server.threads",
                format!(
                    "{} is out of range: must be between 0 (one per CPU) and {MAX_THREADS}",
                    s.threads
                ),
            );
        }
        if s.rx_coalesce_usecs > MAX_RX_COALESCE_USECS {
            v.err(
                "server.rx_coalesce_usecs",
                format!(
                    "{} is out of range: must be between 0 (off) and {MAX_RX_COALESCE_USECS}",
                    s.rx_coalesce_usecs
                ),
            );
        }
        if let Some(user) = &s.user {
            check_user_name(v, user);
        }
        if !(1024..=1024 * 1024).contains(&s.max_header_bytes) {
            v.err(
                "server.max_header_bytes",
                format!(
                    "{} is out of range: must be between 1024 and 1048576 bytes",
                    s.max_header_bytes
                ),
            );
        }
    }

    fn validate_tls(&self, v: &mut Validator) {
        let t = &self.tls;
        match (&t.cert, &t.key) {
            (Some(_), None) => v.err("tls.key", "tls.cert is set but tls.key is not: set both"),
            (None, Some(_)) => v.err("tls.cert", "tls.key is set but tls.cert is not: set both"),
            _ => {}
        }
        if t.pfx.is_some() && (t.cert.is_some() || t.key.is_some()) {
            v.err(
                "tls.pfx",
                "set either tls.pfx or tls.cert and tls.key, not both",
            );
        }
        if t.pfx_password.is_some() && t.pfx_password_file.is_some() {
            v.err(
                "tls.pfx_password",
                "set either tls.pfx_password or tls.pfx_password_file, not both",
            );
        }
        if t.pfx.is_none() {
            if t.pfx_password.is_some() {
                v.err("tls.pfx_password", "set but tls.pfx is not");
            }
            if t.pfx_password_file.is_some() {
                v.err("tls.pfx_password_file", "set but tls.pfx is not");
            }
        }
        let unknown: Vec<&str> = t
            .cipher_suites
            .iter()
            .map(String::as_str)
            .filter(|n| crate::tls::cipher_suite(n).is_none())
            .collect();
        if !unknown.is_empty() {
            v.err(
                "tls.cipher_suites",
                format!(
                    "unknown cipher suite {}; known: {}",
                    unknown.join(", "),
                    crate::tls::DEFAULT_CIPHER_SUITES.join(", ")
                ),
            );
        } else if !t.cipher_suites.is_empty()
            && !t
                .cipher_suites
                .iter()
                .filter_map(|n| crate::tls::cipher_suite(n))
                .any(|s| s.tls13().is_some())
        {
            v.err(
                "tls.cipher_suites",
                "names no TLS 1.3 suite (TLS13_...): TLS 1.3 is always on, so its clients could not connect",
            );
        }
        for (field, p) in [
            ("tls.cert", &t.cert),
            ("tls.key", &t.key),
            ("tls.pfx", &t.pfx),
            ("tls.pfx_password_file", &t.pfx_password_file),
        ] {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                v.err(
                    field,
                    "must not be empty (remove the line to leave it unset)",
                );
            }
        }
    }

    fn validate_network(&self, v: &mut Validator) {
        let n = &self.network;

        // IPv4 pool.
        let p4 = n.ipv4_pool;
        if p4.addr() != p4.network() {
            v.err(
                "network.ipv4_pool",
                format!("{p4} has host bits set: did you mean {}?", p4.trunc()),
            );
        }
        // network + broadcast + gateway + at least two clients: a /29 or larger.
        if p4.prefix_len() > 29 {
            v.err(
                "network.ipv4_pool",
                format!(
                    "{p4} is too small: the network, broadcast and gateway ({}) addresses leave fewer than 2 client addresses; use a /29 or larger",
                    n.gateway_ipv4()
                ),
            );
        }
        let net4 = p4.network();
        if net4.is_loopback() || net4.is_multicast() || net4.is_unspecified() || net4.is_broadcast()
        {
            v.err(
                "network.ipv4_pool",
                format!("{p4} is not a unicast range (loopback, multicast or reserved)"),
            );
        }

        // IPv6 pool.
        if let Some(p6) = n.ipv6_pool {
            if p6.addr() != p6.network() {
                v.err(
                    "network.ipv6_pool",
                    format!("{p6} has host bits set: did you mean {}?", p6.trunc()),
                );
            }
            if !(64..=120).contains(&p6.prefix_len()) {
                v.err(
                    "network.ipv6_pool",
                    format!(
                        "prefix length /{} is out of range: use /64 to /120",
                        p6.prefix_len()
                    ),
                );
            }
            let host_bits6 = 128 - u32::from(p6.prefix_len());
            let host_bits4 = 32 - u32::from(p4.prefix_len());
            if host_bits6 < host_bits4 {
                v.err(
                    "network.ipv6_pool",
                    format!(
                        "{p6} has fewer addresses than network.ipv4_pool {p4}: every client gets one address of each, so use a /{} or larger",
                        128 - host_bits4
                    ),
                );
            }
            let a = p6.network();
            let seg0 = a.segments()[0];
            if a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (seg0 & 0xffc0) == 0xfe80
            {
                v.err(
                    "network.ipv6_pool",
                    format!("{p6} is not a unicast range (loopback, multicast or link-local)"),
                );
            }
        }

        let pools: Vec<IpNet> = std::iter::once(IpNet::V4(p4))
            .chain(n.ipv6_pool.map(IpNet::V6))
            .collect();
        let gateways: Vec<IpAddr> = std::iter::once(IpAddr::V4(n.gateway_ipv4()))
            .chain(n.gateway_ipv6().map(IpAddr::V6))
            .collect();

        // Routes.
        let includes: HashSet<IpNet> = n.split_include.iter().map(IpNet::trunc).collect();
        for (list_name, list, is_include) in [
            ("network.split_include", &n.split_include, true),
            ("network.split_exclude", &n.split_exclude, false),
        ] {
            for (i, route) in list.iter().enumerate() {
                let field = format!("{list_name}[{i}]");
                if route.addr() != route.network() {
                    v.err(
                        &field,
                        format!("{route} has host bits set: did you mean {}?", route.trunc()),
                    );
                }
                let route = route.trunc();
                for pool in &pools {
                    if !overlaps(pool, &route) {
                        continue;
                    }
                    if is_include {
                        // A route covering the whole pool (e.g. the site's 10.0.0.0/8 around a
                        // 10.8.0.0/24 pool, or 0.0.0.0/0) is normal; one inside the pool is not.
                        if !route.contains(pool) || route == *pool {
                            v.err(
                                &field,
                                format!(
                                    "{route} lies inside the client address pool {pool}, which is always routed through the tunnel"
                                ),
                            );
                        }
                    } else {
                        v.err(
                            &field,
                            format!(
                                "{route} overlaps the client address pool {pool}: clients would route tunnel addresses outside the tunnel"
                            ),
                        );
                    }
                }
                if !is_include && includes.contains(&route) {
                    v.err(&field, format!("{route} is also in network.split_include"));
                }
            }
        }

        // DNS.
        for (i, dns) in n.dns.iter().enumerate() {
            let field = format!("network.dns[{i}]");
            if dns.is_unspecified() || dns.is_multicast() || dns.is_loopback() {
                v.err(
                    &field,
                    format!("{dns} is not a usable DNS server address for clients"),
                );
                continue;
            }
            if gateways.contains(dns) {
                continue; // a resolver on the gateway's own tunnel address is fine
            }
            if let Some(pool) = pools.iter().find(|p| p.contains(dns)) {
                let gateway = gateways
                    .iter()
                    .find(|g| g.is_ipv4() == dns.is_ipv4())
                    .map_or_else(String::new, |g| format!(" {g}"));
                v.err(
                    &field,
                    format!(
                        "{dns} is inside the client address pool {pool} and would be handed to a client (only the gateway's own address{gateway} may be used there)"
                    ),
                );
            }
        }
        if let Some(d) = &n.default_domain {
            check_domain(v, "network.default_domain", d);
        }
        for (i, d) in n.split_dns.iter().enumerate() {
            check_domain(v, &format!("network.split_dns[{i}]"), d);
        }

        // MTU.
        if !(576..=9000).contains(&n.mtu) {
            v.err(
                "network.mtu",
                format!("{} is out of range: must be between 576 and 9000", n.mtu),
            );
        }
        if !(576..=65535).contains(&n.link_mtu) {
            v.err(
                "network.link_mtu",
                format!(
                    "{} is out of range: must be between 576 and 65535",
                    n.link_mtu
                ),
            );
        } else if n.mtu > n.link_mtu.saturating_sub(28) {
            v.err(
                "network.mtu",
                format!(
                    "{} is larger than network.link_mtu ({}) minus 28 bytes of IPv4+UDP header: use at most {}",
                    n.mtu,
                    n.link_mtu,
                    n.link_mtu.saturating_sub(28)
                ),
            );
        }

        check_ifname(v, "network.tun_name", &n.tun_name);
        if let Some(ifname) = &n.nat_interface {
            check_ifname(v, "network.nat_interface", ifname);
        }
        if !(1..=65536).contains(&n.queue_len) {
            v.err(
                "network.queue_len",
                format!(
                    "{} is out of range: must be between 1 and 65536 packets",
                    n.queue_len
                ),
            );
        }
    }

    fn validate_timers(&self, v: &mut Validator) {
        let t = &self.timers;
        for (field, value) in [
            ("timers.dpd_secs", t.dpd_secs),
            ("timers.keepalive_secs", t.keepalive_secs),
            ("timers.cookie_timeout_secs", t.cookie_timeout_secs),
            ("timers.auth_timeout_secs", t.auth_timeout_secs),
            ("dtls.switch_to_tcp_secs", self.dtls.switch_to_tcp_secs),
        ] {
            if value == 0 {
                v.err(field, "must be at least 1 second");
            }
        }
    }

    fn validate_other(&self, v: &mut Validator) {
        self.validate_auth(v);
        if let Some(m) = self.metrics.listen {
            let s = self.server.listen;
            let same_ip = m.ip() == s.ip() || m.ip().is_unspecified() || s.ip().is_unspecified();
            if m.port() != 0 && m.port() == s.port() && same_ip {
                v.err(
                    "metrics.listen",
                    format!("{m} collides with server.listen {s}: use another port"),
                );
            }
        }
    }
}

impl Config {
    fn validate_auth(&self, v: &mut Validator) {
        let a = &self.auth;
        if a.users_file.as_os_str().is_empty() {
            v.err("auth.users_file", "must not be empty");
        }
        match a.method {
            AuthMethod::Certificate => match &a.ca_file {
                None => v.err(
                    "auth.ca_file",
                    "required with auth.method = \"certificate\": the PEM file of the CAs that issue client certificates",
                ),
                Some(p) if p.as_os_str().is_empty() => v.err(
                    "auth.ca_file",
                    "must not be empty",
                ),
                Some(_) => {}
            },
            AuthMethod::Password => {
                if a.ca_file.is_some() {
                    v.err("auth.ca_file", "set but auth.method is not \"certificate\"");
                }
                if !a.crl_files.is_empty() {
                    v.err("auth.crl_files", "set but auth.method is not \"certificate\"");
                }
                if a.bind_cookie_to_certificate {
                    v.err(
                        "auth.bind_cookie_to_certificate",
                        "set but auth.method is not \"certificate\"",
                    );
                }
            }
        }
        for (i, p) in a.crl_files.iter().enumerate() {
            if p.as_os_str().is_empty() {
                v.err(&format!("auth.crl_files[{i}]"), "must not be empty");
            }
        }
    }

    fn validate_ops(&self, v: &mut Validator) {
        if let Some(p) = &self.control.socket {
            const FIELD: &str = "control.socket";
            if !p.is_absolute() {
                v.err(FIELD, format!("{} is not an absolute path", p.display()));
            }
            // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
            if p.as_os_str().len() > 107 {
                v.err(
                    FIELD,
                    format!(
                        "{} is {} bytes long; a Unix socket path must be at most 107 bytes",
                        p.display(),
                        p.as_os_str().len()
                    ),
                );
            }
        }
        let b = &self.ban;
        for (field, value) in [
            ("ban.ban_secs", b.ban_secs),
            ("ban.score_reset_secs", b.score_reset_secs),
        ] {
            if value == 0 {
                v.err(field, "must be at least 1 second");
            }
        }
        if b.max_score > 0 && b.auth_failure_points == 0 {
            v.err(
                "ban.auth_failure_points",
                "is 0, so no address ever reaches ban.max_score: set it above 0, or set ban.max_score = 0 to turn automatic bans off",
            );
        }
    }
}

/// Collects errors during validation.
#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            reason: reason.into(),
        });
    }
}

/// Whether two prefixes share any address (CIDR blocks are nested or disjoint).
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

fn check_health_path(v: &mut Validator, p: &str) {
    const FIELD: &str = "server.health_path";
    if !p.starts_with('/') {
        v.err(FIELD, format!("{p:?} must start with '/'"));
        return;
    }
    if p.len() > 256 {
        v.err(FIELD, "longer than 256 bytes");
    }
    if p.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#')
    {
        v.err(
            FIELD,
            format!("{p:?} contains whitespace, control characters, '?' or '#'"),
        );
    }
    let lower = p.to_ascii_lowercase();
    let under = |prefix: &str| lower == prefix || lower.starts_with(&format!("{prefix}/"));
    if p == "/" {
        v.err(FIELD, "\"/\" is where clients start authentication");
    } else if under("/auth") {
        v.err(
            FIELD,
            format!("{p:?} collides with the authentication path /auth"),
        );
    } else if lower.starts_with("/cscosslc") || lower.starts_with("/+csco") {
        v.err(
            FIELD,
            format!(
                "{p:?} collides with the AnyConnect protocol paths (/CSCOSSLC/..., /+CSCOE+/...)"
            ),
        );
    }
}

/// One-line text sent to clients: no control characters (CR/LF would break HTTP headers).
fn check_text(v: &mut Validator, field: &str, s: &str, max: usize) {
    if s.chars().any(char::is_control) {
        v.err(
            field,
            "contains a line break or another control character; it must be a single line",
        );
    }
    if s.len() > max {
        v.err(field, format!("longer than {max} bytes"));
    }
}

fn check_domain(v: &mut Validator, field: &str, d: &str) {
    if d.is_empty() {
        v.err(field, "must not be empty");
        return;
    }
    if d.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == ',')
    {
        v.err(
            field,
            format!(
                "{d:?} contains whitespace, a comma or control characters; give one domain name"
            ),
        );
    }
    if d.len() > 253 {
        v.err(field, "longer than 253 bytes, the limit for a domain name");
    }
}

fn check_server_name(v: &mut Validator, name: &str) {
    const FIELD: &str = "server.server_name";
    if name.parse::<IpAddr>().is_ok() {
        return;
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if name.is_empty() || name.len() > 253 || !ok_chars || name.split('.').any(str::is_empty) {
        v.err(
            FIELD,
            format!("{name:?} is not a host name (letters, digits, '-' and '.', up to 253 bytes) or an IP address"),
        );
    }
}

/// A system user name as `useradd` accepts it: 1 to 32 of `[a-z0-9_.-]` (any case), not starting
/// with `-`, and not all digits (a number would be read as a uid by some tools).
fn check_user_name(v: &mut Validator, name: &str) {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if name.is_empty()
        || name.len() > 32
        || !ok_chars
        || name.starts_with('-')
        || name.chars().all(|c| c.is_ascii_digit())
    {
        v.err(
            "server.user",
            format!(
                "{name:?} is not a user name: 1 to 32 characters from A-Z a-z 0-9 _ - ., not starting with '-', not a number"
            ),
        );
    }
}

fn check_ifname(v: &mut Validator, field: &str, name: &str) {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if name.is_empty() || name.len() > 15 || !ok_chars || name == "." || name == ".." {
        v.err(
            field,
            format!(
                "{name:?} is not a valid interface name: 1 to 15 characters from A-Z a-z 0-9 _ - ."
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../config/tunneld.toml");

    fn invalid_fields(toml: &str) -> Vec<String> {
        match Config::from_toml_str(toml) {
            Err(ConfigError::Invalid(errs)) => errs.into_iter().map(|e| e.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn default_config_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn empty_document_equals_default() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        assert_eq!(Config::from_toml_str(EXAMPLE).unwrap(), Config::default());
    }

    /// A config with every optional field set, so serializing it names every key.
    fn fully_populated() -> Config {
        let mut c = Config::default();
        c.server.banner = Some("b".into());
        c.server.server_name = Some("vpn.example.com".into());
        c.server.user = Some("tunneld".into());
        c.tls.cert = Some("/c".into());
        c.tls.key = Some("/k".into());
        c.tls.pfx = Some("/p".into());
        c.tls.pfx_password = Some("x".into());
        c.tls.pfx_password_file = Some("/x".into());
        c.network.ipv6_pool = Some("fd00::/64".parse().unwrap());
        c.network.default_domain = Some("example.com".into());
        c.network.nat_interface = Some("eth0".into());
        c.auth.ca_file = Some("/ca".into());
        c
    }

    #[test]
    fn example_file_documents_every_field() {
        let value = toml::Value::try_from(fully_populated()).unwrap();
        let tables = value.as_table().unwrap();
        // Split the example into [section] -> lines.
        let mut sections: std::collections::HashMap<String, Vec<&str>> = Default::default();
        let mut current = String::new();
        for line in EXAMPLE.lines() {
            let t = line.trim();
            if t.starts_with('[') && t.ends_with(']') {
                current = t.trim_matches(|c| c == '[' || c == ']').to_owned();
            }
            sections.entry(current.clone()).or_default().push(t);
        }
        let mut missing = Vec::new();
        for (section, fields) in tables {
            let Some(lines) = sections.get(section) else {
                missing.push(format!("[{section}]"));
                continue;
            };
            for key in fields.as_table().unwrap().keys() {
                let present = lines.iter().any(|l| {
                    let l = l.trim_start_matches('#').trim_start();
                    l.strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                // The line above the key must be a comment documenting it.
                if !present {
                    missing.push(format!("{section}.{key}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in config/tunneld.toml: {missing:?}"
        );
    }

    #[test]
    fn certificate_auth_needs_ca_file_and_password_auth_refuses_it() {
        assert_eq!(
            invalid_fields("[auth]\nmethod = \"certificate\"\ncrl_files = [\"\"]\n"),
            ["auth.ca_file", "auth.crl_files[0]"]
        );
        let c = Config::from_toml_str(
            "[auth]\nmethod = \"certificate\"\nca_file = \"/ca.pem\"\ncrl_files = [\"/a.crl\"]\ncert_username = \"uid\"\n",
        )
        .unwrap();
        assert_eq!(c.auth.method, AuthMethod::Certificate);
        assert_eq!(c.auth.cert_username, CertUsername::Uid);
        assert_eq!(
            invalid_fields(
                "[auth]\nca_file = \"/ca.pem\"\ncrl_files = [\"/a.crl\"]\nbind_cookie_to_certificate = true\n"
            ),
            [
                "auth.ca_file",
                "auth.crl_files",
                "auth.bind_cookie_to_certificate"
            ]
        );
        assert!(Config::from_toml_str("[auth]\nmethod = \"kerberos\"\n").is_err());
        assert!(Config::from_toml_str("[auth]\ncert_username = \"sn\"\n").is_err());
    }

    #[test]
    fn server_user_accepts_system_user_names_and_rejects_others() {
        for ok in ["tunneld", "nobody", "svc_vpn-1", "a.b"] {
            Config::from_toml_str(&format!("[server]\nuser = {ok:?}\n")).unwrap();
        }
        for bad in ["", "-x", "1000", "a b", "a:b", &"x".repeat(33)] {
            assert_eq!(
                invalid_fields(&format!("[server]\nuser = {bad:?}\n")),
                ["server.user"],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn default_serializes_and_round_trips() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(Config::from_toml_str(&text).unwrap(), Config::default());
        let full = fully_populated();
        let text = toml::to_string(&full).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, full);
    }

    #[test]
    fn threads_default_one_per_cpu_shared_table_and_bounded() {
        let d = Config::default();
        assert_eq!(d.server.threads, 0);
        assert!(!d.server.private_file_tables);
        assert!(d.server.thread_count() >= 1);
        let c =
            Config::from_toml_str("[server]\nthreads = 4\nprivate_file_tables = true\n").unwrap();
        assert_eq!(c.server.thread_count(), 4);
        assert!(c.server.private_file_tables);
        let e = Config::from_toml_str("[server]\nthreads = 1025\n").unwrap_err();
        assert!(e.to_string().contains("server.threads"), "{e}");
        assert_eq!(d.server.rx_coalesce_usecs, 100);
        let c = Config::from_toml_str("[server]\nrx_coalesce_usecs = 0\n").unwrap();
        assert_eq!(c.server.rx_coalesce_usecs, 0);
        let e = Config::from_toml_str("[server]\nrx_coalesce_usecs = 1001\n").unwrap_err();
        assert!(e.to_string().contains("server.rx_coalesce_usecs"), "{e}");
        // The old key is refused by name, not silently ignored.
        let e = Config::from_toml_str("[server]\nacceptor_threads = 4\n").unwrap_err();
        assert!(e.to_string().contains("acceptor_threads"), "{e}");
    }

    #[test]
    fn metrics_listen_off_disables() {
        let c = Config::from_toml_str("[metrics]\nlisten = \"off\"\n").unwrap();
        assert_eq!(c.metrics.listen, None);
        let c = Config::from_toml_str("[metrics]\nlisten = \"\"\n").unwrap();
        assert_eq!(c.metrics.listen, None);
        let c = Config::from_toml_str("[metrics]\nlisten = \"[::1]:9100\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some("[::1]:9100".parse().unwrap()));
        let e = Config::from_toml_str("[metrics]\nlisten = \"nope\"\n").unwrap_err();
        assert!(e.to_string().contains("\"off\""), "{e}");
    }

    #[test]
    fn unknown_key_is_a_parse_error_naming_it() {
        let e = Config::from_toml_str("[network]\nmut = 1400\n").unwrap_err();
        let ConfigError::Parse {
            path: None,
            message,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(message.contains("mut"), "{message}");
        let e = Config::from_toml_str("[netwrok]\n").unwrap_err();
        assert!(e.to_string().contains("netwrok"), "{e}");
    }

    #[test]
    fn wrong_type_is_a_parse_error_naming_the_line() {
        let e = Config::from_toml_str("[network]\nmtu = \"big\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("mtu") && s.contains("line 2"), "{s}");
    }

    #[test]
    fn tls_cipher_suites_must_be_known_and_include_tls13() {
        let c = Config::from_toml_str(
            "[tls]\ncipher_suites = [\"TLS13_AES_256_GCM_SHA384\", \"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\"]\n",
        )
        .unwrap();
        assert_eq!(c.tls.cipher_suites.len(), 2);
        let e = Config::from_toml_str("[tls]\ncipher_suites = [\"TLS13_AES_128_CCM_SHA256\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.cipher_suites"), "{e}");
        assert!(
            e.contains("unknown cipher suite TLS13_AES_128_CCM_SHA256"),
            "{e}"
        );
        let e = Config::from_toml_str(
            "[tls]\ncipher_suites = [\"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("names no TLS 1.3 suite"), "{e}");
    }

    #[test]
    fn tls_min_version_parses() {
        let c = Config::from_toml_str("[tls]\nmin_version = \"1.3\"\n").unwrap();
        assert_eq!(c.tls.min_version, TlsVersion::V1_3);
        assert!(Config::from_toml_str("[tls]\nmin_version = \"1.1\"\n").is_err());
    }

    #[test]
    fn gateway_addresses_are_first_hosts() {
        let mut n = NetworkConfig::default();
        assert_eq!(n.gateway_ipv4(), Ipv4Addr::new(192, 168, 100, 1));
        assert_eq!(n.gateway_ipv6(), None);
        n.ipv6_pool = Some("fd00:1::/64".parse().unwrap());
        assert_eq!(n.gateway_ipv6(), Some("fd00:1::1".parse().unwrap()));
    }

    #[test]
    fn all_errors_are_reported_together() {
        let toml = r#"
[server]
health_path = "health"
max_sessions = 0
banner = "line1\nline2"
[tls]
cert = "/etc/c.pem"
pfx = "/etc/p.pfx"
pfx_password = "a"
pfx_password_file = "/etc/pw"
[network]
ipv4_pool = "10.0.0.0/30"
mtu = 100
tun_name = "a-name-that-is-way-too-long"
default_domain = "exa mple.com"
split_dns = ["ok.example", "bad\r.example"]
[timers]
dpd_secs = 0
keepalive_secs = 0
auth_timeout_secs = 0
"#;
        let fields = invalid_fields(toml);
        for f in [
            "server.health_path",
            "server.max_sessions",
            "server.banner",
            "tls.key",
            "tls.pfx",
            "tls.pfx_password",
            "network.ipv4_pool",
            "network.mtu",
            "network.tun_name",
            "network.default_domain",
            "network.split_dns[1]",
            "timers.dpd_secs",
            "timers.keepalive_secs",
            "timers.auth_timeout_secs",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
        assert!(!fields.iter().any(|x| x == "network.split_dns[0]"));
        // Display lists one per line.
        let e = Config::from_toml_str(toml).unwrap_err().to_string();
        assert_eq!(e.lines().count(), fields.len() + 1, "{e}");
    }

    #[test]
    fn pool_sizes() {
        let ok = |p: &str| Config::from_toml_str(&format!("[network]\nipv4_pool = \"{p}\"\n"));
        assert!(ok("10.0.0.0/29").is_ok());
        assert!(ok("10.0.0.0/30").is_err());
        assert!(ok("10.0.0.0/32").is_err());
        assert!(ok("10.0.0.0/8").is_ok());
        let e = ok("10.0.0.5/24").unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/24"), "{e}");
        assert!(ok("127.0.0.0/24").is_err());
    }

    #[test]
    fn ipv6_pool_rules() {
        let v6 = |p4: &str, p6: &str| {
            Config::from_toml_str(&format!(
                "[network]\nipv4_pool = \"{p4}\"\nipv6_pool = \"{p6}\"\n"
            ))
        };
        assert!(v6("10.0.0.0/24", "fd00::/64").is_ok());
        assert!(v6("10.0.0.0/24", "fd00::/120").is_ok());
        assert!(v6("10.0.0.0/24", "fd00::/121").is_err());
        assert!(v6("10.0.0.0/24", "fd00::/48").is_err());
        assert!(v6("10.0.0.0/16", "fd00::/120").is_err()); // can't mirror 65536 addresses
        assert!(v6("10.0.0.0/16", "fd00::/112").is_ok());
        assert!(v6("10.0.0.0/24", "fe80::/64").is_err());
        assert!(v6("10.0.0.0/24", "fd00::1/64").is_err());
    }

    #[test]
    fn routes_overlapping_the_pool_are_rejected() {
        let fields = invalid_fields(
            r#"
[network]
ipv4_pool = "10.8.0.0/24"
split_include = ["10.0.0.0/8", "172.16.0.0/12", "10.8.0.128/25", "10.8.0.0/24", "192.0.2.1/24"]
split_exclude = ["10.8.0.0/16", "198.51.100.0/24", "172.16.0.0/12"]
"#,
        );
        assert_eq!(
            fields,
            vec![
                "network.split_include[2]", // inside the pool
                "network.split_include[3]", // equal to the pool
                "network.split_include[4]", // host bits
                "network.split_exclude[0]", // covers the pool
                "network.split_exclude[2]", // also included
            ]
        );
    }

    #[test]
    fn dns_inside_the_pool_is_rejected_except_the_gateway() {
        let fields = invalid_fields(
            r#"
[network]
ipv6_pool = "fd00::/64"
dns = ["192.168.100.1", "192.168.100.53", "8.8.8.8", "fd00::1", "fd00::53", "0.0.0.0"]
"#,
        );
        assert_eq!(
            fields,
            vec!["network.dns[1]", "network.dns[4]", "network.dns[5]"]
        );
    }

    #[test]
    fn mtu_must_fit_in_link_mtu() {
        let m = |mtu: u32, link: u32| {
            Config::from_toml_str(&format!("[network]\nmtu = {mtu}\nlink_mtu = {link}\n"))
        };
        assert!(m(1472, 1500).is_ok());
        assert!(m(1473, 1500).is_err());
        assert!(m(9000, 9028).is_ok());
        assert!(m(9001, 10000).is_err());
        assert!(m(575, 1500).is_err());
        assert!(m(1400, 100).is_err());
    }

    #[test]
    fn health_path_rules() {
        let h = |p: &str| Config::from_toml_str(&format!("[server]\nhealth_path = \"{p}\"\n"));
        assert!(h("/health").is_ok());
        assert!(h("/healthz/ready").is_ok());
        for bad in [
            "health",
            "/",
            "/auth",
            "/auth/x",
            "/CSCOSSLC/tunnel",
            "/+CSCOE+/logon.html",
            "/a b",
            "/x?y",
        ] {
            assert!(h(bad).is_err(), "{bad} accepted");
        }
        assert!(h("/authority").is_ok());
    }

    #[test]
    fn tun_name_rules() {
        let t = |p: &str| Config::from_toml_str(&format!("[network]\ntun_name = \"{p}\"\n"));
        assert!(t("vpn_0.a-b").is_ok());
        assert!(t("123456789012345").is_ok());
        assert!(t("1234567890123456").is_err());
        assert!(t("").is_err());
        assert!(t("tun/0").is_err());
        assert!(t("tun 0").is_err());
        assert!(t("..").is_err());
    }

    #[test]
    fn tls_source_combinations() {
        let t = |s: &str| Config::from_toml_str(&format!("[tls]\n{s}\n"));
        assert!(t("cert = \"/c\"\nkey = \"/k\"").is_ok());
        assert!(t("pfx = \"/p\"\npfx_password_file = \"/pw\"").is_ok());
        assert!(t("pfx = \"/p\"").is_ok());
        assert!(t("key = \"/k\"").is_err());
        assert!(t("pfx = \"/p\"\nkey = \"/k\"").is_err());
        assert!(t("pfx_password = \"x\"").is_err());
    }

    #[test]
    fn dtls_section_parses_and_switch_timeout_must_be_positive() {
        let c = Config::from_toml_str("[dtls]\nenabled = false\nswitch_to_tcp_secs = 7\n").unwrap();
        assert!(!c.dtls.enabled);
        assert_eq!(c.dtls.switch_to_tcp_secs, 7);
        assert!(c.dtls.socket_per_session);
        let shared = Config::from_toml_str("[dtls]\nsocket_per_session = false\n").unwrap();
        assert!(!shared.dtls.socket_per_session);
        assert_eq!(
            invalid_fields("[dtls]\nswitch_to_tcp_secs = 0\n"),
            vec!["dtls.switch_to_tcp_secs"]
        );
        assert!(Config::from_toml_str("[dtls]\nport = 443\n").is_err());
    }

    #[test]
    fn metrics_port_collision() {
        let fields = invalid_fields(
            "[server]\nlisten = \"0.0.0.0:9477\"\n[metrics]\nlisten = \"127.0.0.1:9477\"\n",
        );
        assert_eq!(fields, vec!["metrics.listen"]);
    }

    #[test]
    fn control_socket_off_relative_or_too_long() {
        let c = Config::from_toml_str("[control]\nsocket = \"off\"\n").unwrap();
        assert_eq!(c.control.socket, None);
        let c = Config::from_toml_str("[control]\nsocket = \"/tmp/x.sock\"\n").unwrap();
        assert_eq!(c.control.socket, Some(PathBuf::from("/tmp/x.sock")));
        assert_eq!(
            invalid_fields("[control]\nsocket = \"run/x.sock\"\n"),
            vec!["control.socket"]
        );
        let long = format!("/{}", "a".repeat(120));
        assert_eq!(
            invalid_fields(&format!("[control]\nsocket = \"{long}\"\n")),
            vec!["control.socket"]
        );
    }

    #[test]
    fn ban_settings_are_checked() {
        assert_eq!(
            invalid_fields("[ban]\nban_secs = 0\nscore_reset_secs = 0\nauth_failure_points = 0\n"),
            vec![
                "ban.ban_secs",
                "ban.score_reset_secs",
                "ban.auth_failure_points"
            ]
        );
        // Automatic bans off: zero points are fine then.
        assert!(Config::from_toml_str("[ban]\nmax_score = 0\nauth_failure_points = 0\n").is_ok());
    }

    #[test]
    fn load_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        let e = Config::load(&p).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("t.toml"));
        std::fs::write(&p, "[server\n").unwrap();
        let e = Config::load(&p).unwrap_err();
        assert!(
            matches!(e, ConfigError::Parse { path: Some(_), .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("t.toml"));
        std::fs::write(&p, "[timers]\ndpd_secs = 10\n").unwrap();
        assert_eq!(Config::load(&p).unwrap().timers.dpd_secs, 10);
    }
}
