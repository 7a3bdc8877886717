//! The users file: who may log in, with which password, in which group.
//!
//! The format is ocserv's `ocpasswd` file, so an existing ocserv password file works unchanged:
//!
//! ```text
//! # comment
//! alice:engineering:$argon2id$v=19$m=19456,t=2,p=1$...
//! bob:*:$6$saltsalt$...
//! carol:$5$saltsalt$...
//! dave:*:!$argon2id$...
//! ```
//!
//! * One user per line, `username:group:hash`; the two-field form `username:hash` is accepted
//!   too. A group of `*` or an empty group means "no group". Usernames are compared exactly
//!   (case-sensitive).
//! * Blank lines and lines whose first non-blank character is `#` are ignored.
//! * Hashes: Argon2 PHC strings (`$argon2id$...`, which is what [`hash_password`] and
//!   `tunnelctl user add` write; `$argon2i$`/`$argon2d$` are verified too) and SHA-crypt
//!   (`$6$...` SHA-512, `$5$...` SHA-256, with or without `rounds=N`), which is what `ocpasswd`
//!   and `openssl passwd -6` produce.
//! * A hash starting with `!` marks a **locked** account (as `passwd -l` and `ocpasswd -l` do):
//!   whatever follows the `!` is ignored and the user cannot log in.
//! * Any other hash (`$1$` MD5-crypt, bcrypt, DES, plain text, empty...) is a load error naming
//!   the line, as are duplicate usernames and malformed lines. All such errors are reported at
//!   once.
//!
//! Verifying an Argon2 hash costs 20–50 ms of CPU: call [`UserDb::verify`] from
//! `tokio::task::spawn_blocking`, not on an async worker thread.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::atomic_file::write_atomically;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Argon2id memory cost of new hashes, in KiB (19 MiB). With [`ARGON2_T_COST`] and
/// [`ARGON2_P_COST`] this is the first of OWASP's recommended Argon2id configurations
/// (m=19456 KiB, t=2, p=1): about 20–50 ms per verification on a server core.
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Argon2id iterations of new hashes.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id parallelism of new hashes.
pub const ARGON2_P_COST: u32 = 1;

/// Verified in place of a real hash when the user is unknown or locked, so that the answer takes
/// as long as for a real user with a default-parameter hash. Its salt and output are random
/// bytes, so no password matches it; the parameters must equal the ones above (a unit test
/// checks).
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$h0Rl0kT7sqdIo4ouEvD9dQ$ZT0b1iFw4sKkx4cuy6iuupsgjFGlmOOyhubTY+y5I6g";

/// Longest username accepted, in bytes.
const MAX_USERNAME_LEN: usize = 256;

/// One problem on one line of a users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with the line.
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Why the users file could not be read, parsed or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// The users file (`auth.users_file`) could not be read.
    #[error("auth.users_file: cannot read {}: {source}", path.display())]
    Read {
        /// The users file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The users file could not be written (or locked for writing).
    #[error("cannot write users file {}: {source}", path.display())]
    Write {
        /// The file (or its directory) that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// Lines of the users file are malformed; every bad line is listed.
    #[error("{}: {} bad line{}:\n{}", path.as_ref().map_or_else(|| "users file".to_owned(), |p| format!("users file {}", p.display())), errors.len(), if errors.len() == 1 { "" } else { "s" }, DisplayList(errors))]
    Invalid {
        /// The users file, when the text came from a file.
        path: Option<PathBuf>,
        /// Each bad line and why.
        errors: Vec<LineError>,
    },
    /// A username given to add, change or delete is not acceptable.
    #[error("invalid username {username:?}: {reason}")]
    InvalidUsername {
        /// The username as given.
        username: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A group name given to add or change a user is not acceptable.
    #[error("invalid group {group:?}: {reason}")]
    InvalidGroup {
        /// The group as given.
        group: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A hash given to store is not in a supported format.
    #[error("invalid password hash: {reason}")]
    InvalidHash {
        /// Why it is rejected.
        reason: String,
    },
    /// Hashing a password failed (should not happen with the built-in parameters).
    #[error("cannot hash password: {reason}")]
    Hash {
        /// The hasher's explanation.
        reason: String,
    },
}

/// Formats line errors one per line, indented.
struct DisplayList<'a>(&'a [LineError]);

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

/// The result of [`UserDb::verify`].
///
/// Tell the client the same thing for every failure: distinguishing them would let anyone probe
/// which usernames exist. The variants are for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum VerifyOutcome {
    /// The password is right.
    Ok {
        /// The user's group from the file (`None` for an empty group or `*`).
        group: Option<String>,
    },
    /// No such user.
    UnknownUser,
    /// The user exists but the password is wrong.
    BadPassword,
    /// The user exists but the account is locked (`!` before the hash).
    Locked,
}

/// A stored password hash, already checked for syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StoredHash {
    /// `$argon2id$`, `$argon2i$` or `$argon2d$` PHC string.
    Argon2(String),
    /// `$6$` SHA-512-crypt.
    Sha512(String),
    /// `$5$` SHA-256-crypt.
    Sha256(String),
    /// `!...`: locked account.
    Locked,
}

#[derive(Debug, Clone)]
struct User {
    group: Option<String>,
    hash: StoredHash,
}

/// The users file in memory: username → group and password hash.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: HashMap<String, User>,
}

impl UserDb {
    /// Reads and parses the users file at `path`.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            UsersError::Invalid { path: None, errors } => UsersError::Invalid {
                path: Some(path.to_owned()),
                errors,
            },
            other => other,
        })
    }

    /// Loads the users file as `auth` needs it: with `method = "password"` it must exist; with
    /// `method = "certificate"` a missing file is an empty database (the file only locks users
    /// out and gives groups there).
    pub fn load_for(auth: &crate::config::AuthConfig) -> Result<Self, UsersError> {
        match Self::load(&auth.users_file) {
            Err(UsersError::Read { source, .. })
                if auth.method == crate::config::AuthMethod::Certificate
                    && source.kind() == io::ErrorKind::NotFound =>
            {
                Ok(Self::empty())
            }
            other => other,
        }
    }

    /// Parses the text of a users file, reporting every bad line at once.
    pub fn parse(text: &str) -> Result<Self, UsersError> {
        let mut users = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let Some(entry) = split_line(raw) else {
                continue;
            };
            let parsed = entry.and_then(|(name, group, hash)| {
                check_username(name).map_err(|r| format!("username {name:?}: {r}"))?;
                let hash = classify_hash(hash)?;
                Ok((name, group, hash))
            });
            match parsed {
                Err(reason) => errors.push(LineError { line, reason }),
                Ok((name, group, hash)) => {
                    if let Some(first) = first_line.get(name) {
                        errors.push(LineError {
                            line,
                            reason: format!("user {name:?} is already defined on line {first}"),
                        });
                        continue;
                    }
                    first_line.insert(name.to_owned(), line);
                    users.insert(name.to_owned(), User { group, hash });
                }
            }
        }
        if errors.is_empty() {
            Ok(Self { users })
        } else {
            Err(UsersError::Invalid { path: None, errors })
        }
    }

    /// A database with no users (nobody can log in).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Checks `password` for `username` and returns the user's group on success.
    ///
    /// Takes about as long for an unknown or locked user as for a real one (a fixed dummy Argon2
    /// hash with the default parameters is verified instead), so timing does not reveal which
    /// usernames exist. (A user whose stored hash has other costs, e.g. an imported SHA-crypt
    /// hash, is still distinguishable by timing.) CPU-heavy: call it from a blocking thread.
    pub fn verify(&self, username: &str, password: &str) -> VerifyOutcome {
        let Some(user) = self.users.get(username) else {
            dummy_verify(password);
            return VerifyOutcome::UnknownUser;
        };
        let ok = match &user.hash {
            StoredHash::Locked => {
                dummy_verify(password);
                return VerifyOutcome::Locked;
            }
            StoredHash::Argon2(h) => verify_argon2(h, password),
            StoredHash::Sha512(h) => sha_crypt::sha512_check(password, h).is_ok(),
            StoredHash::Sha256(h) => sha_crypt::sha256_check(password, h).is_ok(),
        };
        if ok {
            VerifyOutcome::Ok {
                group: user.group.clone(),
            }
        } else {
            VerifyOutcome::BadPassword
        }
    }

    /// Whether `username` has an entry whose hash is locked (`!...`). Used in certificate mode,
    /// where no password is checked.
    pub fn is_locked(&self, username: &str) -> bool {
        self.users
            .get(username)
            .is_some_and(|u| u.hash == StoredHash::Locked)
    }

    /// Whether `username` has an entry (locked or not).
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The group of `username` (`None` when the user is unknown or has no group).
    pub fn group(&self, username: &str) -> Option<&str> {
        self.users.get(username).and_then(|u| u.group.as_deref())
    }

    /// Number of users (locked ones included).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Splits a line into (username, group, hash). `None` for blank and comment lines;
/// `Some(Err)` for malformed ones.
#[allow(clippy::type_complexity)]
fn split_line(raw: &str) -> Option<Result<(&str, Option<String>, &str), String>> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.splitn(3, ':');
    let name = fields.next().unwrap_or_default();
    let (group, hash) = match (fields.next(), fields.next()) {
        (Some(hash), None) => (None, hash),
        (Some(group), Some(hash)) => (Some(group), hash),
        (None, _) => {
            return Some(Err(
                "expected \"username:group:hash\" or \"username:hash\"".to_owned()
            ))
        }
    };
    let group = group
        .filter(|g| !g.is_empty() && *g != "*")
        .map(str::to_owned);
    Some(Ok((name, group, hash)))
}

/// Recognizes a stored hash and checks its syntax; the error names the problem.
fn classify_hash(hash: &str) -> Result<StoredHash, String> {
    if hash.starts_with('!') {
        return Ok(StoredHash::Locked);
    }
    if hash.starts_with("$argon2") {
        let parsed = PasswordHash::new(hash).map_err(|e| format!("malformed Argon2 hash: {e}"))?;
        Algorithm::try_from(parsed.algorithm).map_err(|e| format!("malformed Argon2 hash: {e}"))?;
        Params::try_from(&parsed).map_err(|e| format!("unusable Argon2 parameters: {e}"))?;
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err("malformed Argon2 hash: no salt or no hash output".to_owned());
        }
        return Ok(StoredHash::Argon2(hash.to_owned()));
    }
    if hash.starts_with("$6$") {
        check_sha_crypt(hash, 86)
            .map_err(|r| format!("malformed SHA-512-crypt ($6$) hash: {r}"))?;
        return Ok(StoredHash::Sha512(hash.to_owned()));
    }
    if hash.starts_with("$5$") {
        check_sha_crypt(hash, 43)
            .map_err(|r| format!("malformed SHA-256-crypt ($5$) hash: {r}"))?;
        return Ok(StoredHash::Sha256(hash.to_owned()));
    }
    if hash.is_empty() {
        return Err("empty password hash (use \"!\" to lock an account)".to_owned());
    }
    let scheme = if hash.starts_with('$') {
        let id = hash
            .trim_start_matches('$')
            .split('$')
            .next()
            .unwrap_or_default();
        format!("\"${id}$\"")
    } else {
        "not a crypt hash".to_owned()
    };
    Err(format!(
        "unsupported password hash scheme ({scheme}); supported: $argon2id$, $6$, $5$, or ! to lock (reset it with `tunnelctl user passwd`)"
    ))
}

/// `$N$[rounds=R$]salt$hash` with a hash of `hash_len` crypt-base64 characters.
fn check_sha_crypt(hash: &str, hash_len: usize) -> Result<(), String> {
    let parts: Vec<&str> = hash.split('$').collect();
    let (rounds, encoded) = match parts.as_slice() {
        ["", _, _salt, encoded] => (None, *encoded),
        ["", _, rounds, _salt, encoded] => (Some(*rounds), *encoded),
        _ => return Err("expected $N$salt$hash or $N$rounds=R$salt$hash".to_owned()),
    };
    if let Some(r) = rounds {
        let n: usize = r
            .strip_prefix("rounds=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{r:?} is not rounds=NUMBER"))?;
        if !(sha_crypt::ROUNDS_MIN..=sha_crypt::ROUNDS_MAX).contains(&n) {
            return Err(format!(
                "rounds={n} is outside {}..={}",
                sha_crypt::ROUNDS_MIN,
                sha_crypt::ROUNDS_MAX
            ));
        }
    }
    let alphabet_ok = encoded
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    if encoded.len() != hash_len || !alphabet_ok {
        return Err(format!(
            "the hash part must be {hash_len} characters of [./0-9A-Za-z]"
        ));
    }
    Ok(())
}

fn verify_argon2(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spends the time of one default-parameter Argon2 verification.
fn dummy_verify(password: &str) {
    let _ = verify_argon2(DUMMY_HASH, password);
}

/// Hashes `password` for storage: Argon2id (version 0x13) with a random 16-byte salt and
/// OWASP's m=19456 KiB, t=2, p=1 ([`ARGON2_M_COST_KIB`], [`ARGON2_T_COST`], [`ARGON2_P_COST`]);
/// returns the PHC string (`$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH`).
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let params =
        Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None).map_err(|e| {
            UsersError::Hash {
                reason: e.to_string(),
            }
        })?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash {
            reason: e.to_string(),
        })
}

/// Checks a username for storage: not empty, at most 256 bytes, no `:`, no control characters,
/// no leading or trailing whitespace, not starting with `#` (which would make a comment).
pub(crate) fn check_username(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_USERNAME_LEN {
        return Err("longer than 256 bytes");
    }
    if name.contains(':') {
        return Err("must not contain ':'");
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if name.trim() != name {
        return Err("must not start or end with whitespace");
    }
    if name.starts_with('#') {
        return Err("must not start with '#'");
    }
    Ok(())
}

/// Adds `username` or replaces its entry, with `group` (`None` is written as `*`, ocpasswd's
/// "no group") and an already computed `hash` (see [`hash_password`]; a `!`-prefixed hash locks
/// the account). Other lines, comments and blank lines are kept as they are; a new user is
/// appended at the end. Creates the file if it does not exist.
///
/// The file is rewritten atomically (a temporary file in the same directory, then a rename), under
/// an exclusive `flock` on the directory so that two concurrent edits do not lose one another. A
/// new file gets mode 0600; an existing file keeps its owner, group and permissions, except that
/// permissions for "others" are removed. The result is parsed before it replaces the file: if any
/// line of it would not load, nothing is written.
pub fn set_user(
    path: &Path,
    username: &str,
    group: Option<&str>,
    hash: &str,
) -> Result<(), UsersError> {
    check_username(username).map_err(|reason| UsersError::InvalidUsername {
        username: username.to_owned(),
        reason,
    })?;
    let group = match group {
        None | Some("") | Some("*") => "*",
        Some(g) => {
            let reason = if g.contains(':') {
                Some("must not contain ':'")
            } else if g.chars().any(char::is_control) {
                Some("must not contain control characters")
            } else if g.trim() != g {
                Some("must not start or end with whitespace")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(UsersError::InvalidGroup {
                    group: g.to_owned(),
                    reason,
                });
            }
            g
        }
    };
    if hash.contains(|c: char| c == ':' || c.is_control()) {
        return Err(UsersError::InvalidHash {
            reason: "contains ':' or a control character".to_owned(),
        });
    }
    classify_hash(hash).map_err(|reason| UsersError::InvalidHash { reason })?;
    let new_line = format!("{username}:{group}:{hash}");
    edit_file(path, |lines| {
        let mut replaced = false;
        lines.retain_mut(|line| {
            if line_user(line) != Some(username) {
                return true;
            }
            if replaced {
                return false; // drop later duplicates
            }
            replaced = true;
            line.clone_from(&new_line);
            true
        });
        if !replaced {
            lines.push(new_line.clone());
        }
        true
    })
    .map(|_| ())
}

/// Removes `username`'s entry; returns whether there was one (`false` also when the file does not
/// exist). Other lines are kept; the rewrite is atomic as in [`set_user`].
pub fn delete_user(path: &Path, username: &str) -> Result<bool, UsersError> {
    edit_file(path, |lines| {
        let before = lines.len();
        lines.retain(|line| line_user(line) != Some(username));
        lines.len() != before
    })
}

/// The username of a user line (`None` for blank and comment lines).
fn line_user(line: &str) -> Option<&str> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    t.split(':').next()
}

/// Reads the file as lines, lets `edit` change them (it returns whether anything changed), checks
/// the result parses, and replaces the file atomically. Returns what `edit` returned.
fn edit_file(path: &Path, edit: impl FnOnce(&mut Vec<String>) -> bool) -> Result<bool, UsersError> {
    let write_err = |p: &Path, source: io::Error| UsersError::Write {
        path: p.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let _lock = lock_dir(&dir).map_err(|e| write_err(&dir, e))?;

    let (text, meta) = match fs::read_to_string(path) {
        Ok(t) => {
            let meta = fs::metadata(path).map_err(|source| UsersError::Read {
                path: path.to_owned(),
                source,
            })?;
            (t, Some(meta))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (String::new(), None),
        Err(source) => {
            return Err(UsersError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if !edit(&mut lines) {
        return Ok(false);
    }
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    UserDb::parse(&out).map_err(|e| match e {
        UsersError::Invalid { errors, .. } => UsersError::Invalid {
            path: Some(path.to_owned()),
            errors,
        },
        other => other,
    })?;

    let mode = meta
        .as_ref()
        .map_or(0o600, |m| m.permissions().mode() & 0o770);
    let owner = meta.as_ref().map(|m| (m.uid(), m.gid()));
    write_atomically(path, out.as_bytes(), mode, owner).map_err(|e| write_err(path, e))?;
    Ok(true)
}

/// Holds an exclusive `flock` on a directory until dropped.
struct DirLock(#[allow(dead_code)] fs::File);

fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir)?;
    // SAFETY: `flock` only reads the descriptor number, which `f` keeps open for the call; it
    // touches no memory of ours.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(DirLock(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    // `openssl passwd -6 -salt abc secret` and `openssl passwd -5 -salt abc secret`.
    const SHA512_SECRET: &str = "$6$abc$IdWKNKTJEb8LxY7CGg8YBXlvtfZzFw7Mp/r6niK9YB2mdvgY..TKjv1T..8RadRt2qvUHYRLr/TsVArtr91iR1";
    const SHA256_SECRET: &str = "$5$abc$qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0";

    fn ok(group: Option<&str>) -> VerifyOutcome {
        VerifyOutcome::Ok {
            group: group.map(str::to_owned),
        }
    }

    #[test]
    fn ocserv_sha_crypt_hashes_verify() {
        let text = format!("alice:staff:{SHA512_SECRET}\nbob:*:{SHA256_SECRET}\n");
        let db = UserDb::parse(&text).unwrap();
        assert_eq!(db.len(), 2);
        assert_eq!(db.verify("alice", "secret"), ok(Some("staff")));
        assert_eq!(db.verify("bob", "secret"), ok(None));
        assert_eq!(db.verify("alice", "Secret"), VerifyOutcome::BadPassword);
        assert_eq!(db.verify("bob", "secre"), VerifyOutcome::BadPassword);
    }

    #[test]
    fn sha_crypt_hashes_made_by_the_crate_verify_with_rounds() {
        let h6 =
            sha_crypt::sha512_simple("pw", &sha_crypt::Sha512Params::new(10_000).unwrap()).unwrap();
        let h5 =
            sha_crypt::sha256_simple("pw", &sha_crypt::Sha256Params::new(5_000).unwrap()).unwrap();
        assert!(h6.contains("rounds=10000"));
        let db = UserDb::parse(&format!("a:{h6}\nb::{h5}\n")).unwrap();
        assert_eq!(db.verify("a", "pw"), ok(None));
        assert_eq!(db.verify("b", "pw"), ok(None));
        assert_eq!(db.verify("a", "px"), VerifyOutcome::BadPassword);
    }

    #[test]
    fn argon2_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_ne!(h, hash_password("correct horse").unwrap(), "salt is random");
        let db = UserDb::parse(&format!("carol:ops:{h}\n")).unwrap();
        assert_eq!(db.verify("carol", "correct horse"), ok(Some("ops")));
        assert_eq!(
            db.verify("carol", "correct horse "),
            VerifyOutcome::BadPassword
        );
        assert_eq!(
            db.verify("Carol", "correct horse"),
            VerifyOutcome::UnknownUser
        );
    }

    #[test]
    fn unknown_and_locked_users() {
        let h = hash_password("pw").unwrap();
        let db = UserDb::parse(&format!("dave:*:!{h}\neve:*:!\n")).unwrap();
        assert_eq!(db.verify("dave", "pw"), VerifyOutcome::Locked);
        assert_eq!(db.verify("eve", ""), VerifyOutcome::Locked);
        assert_eq!(db.verify("nobody", "pw"), VerifyOutcome::UnknownUser);
        assert!(db.contains("dave"));
        assert_eq!(UserDb::empty().verify("x", "y"), VerifyOutcome::UnknownUser);
        assert!(UserDb::empty().is_empty());
    }

    #[test]
    fn is_locked_only_for_listed_locked_users() {
        let h = hash_password("pw").unwrap();
        let db = UserDb::parse(&format!("bob:*:{h}\ndave:*:!{h}\n")).unwrap();
        assert!(db.is_locked("dave"));
        assert!(!db.is_locked("bob"));
        assert!(!db.is_locked("nobody"));
    }

    #[test]
    fn missing_users_file_is_empty_in_certificate_mode_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut auth = crate::config::AuthConfig {
            users_file: dir.path().join("absent"),
            ..Default::default()
        };
        assert!(matches!(
            UserDb::load_for(&auth),
            Err(UsersError::Read { .. })
        ));
        auth.method = crate::config::AuthMethod::Certificate;
        assert!(UserDb::load_for(&auth).unwrap().is_empty());
        std::fs::write(&auth.users_file, "bad line without hash\n").unwrap();
        assert!(matches!(
            UserDb::load_for(&auth),
            Err(UsersError::Invalid { .. })
        ));
    }

    #[test]
    fn dummy_hash_has_the_default_parameters() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST)
        );
    }

    #[test]
    fn comments_blank_lines_and_two_field_form() {
        let text = format!("# users\n\n   # indented comment\nfrank:{SHA512_SECRET}\r\n  \n");
        let db = UserDb::parse(&text).unwrap();
        assert_eq!(db.len(), 1);
        assert_eq!(db.verify("frank", "secret"), ok(None));
    }

    #[test]
    fn malformed_lines_are_all_reported_with_line_numbers() {
        let text = format!(
            "# header\n\
             good:*:{SHA256_SECRET}\n\
             nocolon\n\
             md5:*:$1$abc$xyz\n\
             plain:*:hunter2\n\
             empty:*:\n\
             good:*:{SHA256_SECRET}\n\
             short:*:$6$abc$tooshort\n\
             badargon:*:$argon2id$v=19$garbage\n\
             :*:{SHA256_SECRET}\n"
        );
        let e = UserDb::parse(&text).unwrap_err();
        let UsersError::Invalid { errors, .. } = &e else {
            panic!("{e:?}")
        };
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9, 10], "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("line 4: unsupported password hash scheme (\"$1$\")"),
            "{msg}"
        );
        assert!(msg.contains("already defined on line 2"), "{msg}");
    }

    #[test]
    fn load_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        assert!(matches!(UserDb::load(&p), Err(UsersError::Read { .. })));
        fs::write(&p, "x:*:$1$a$b\n").unwrap();
        let e = UserDb::load(&p).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("line 1"),
            "{e}"
        );
    }

    #[test]
    fn set_and_delete_preserve_other_lines_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        let original = format!(
            "# managed by hand\nalice:staff:{SHA512_SECRET}\n\n# bob below\nbob:*:{SHA256_SECRET}\n"
        );
        fs::write(&p, &original).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();

        let h = hash_password("new").unwrap();
        set_user(&p, "alice", Some("admins"), &h).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            format!("# managed by hand\nalice:admins:{h}\n\n# bob below\nbob:*:{SHA256_SECRET}\n")
        );
        // World bits dropped, the rest kept.
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );

        set_user(&p, "carol", None, &h).unwrap();
        let db = UserDb::load(&p).unwrap();
        assert_eq!(db.verify("alice", "new"), ok(Some("admins")));
        assert_eq!(db.verify("carol", "new"), ok(None));
        assert_eq!(db.verify("bob", "secret"), ok(None));
        assert!(fs::read_to_string(&p)
            .unwrap()
            .ends_with(&format!("carol:*:{h}\n")));

        assert!(delete_user(&p, "alice").unwrap());
        assert!(!delete_user(&p, "alice").unwrap());
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            format!("# managed by hand\n\n# bob below\nbob:*:{SHA256_SECRET}\ncarol:*:{h}\n")
        );
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn set_user_creates_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        assert!(!delete_user(&p, "nobody").unwrap());
        assert!(!p.exists());
        set_user(&p, "a", Some("g"), SHA256_SECRET).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            format!("a:g:{SHA256_SECRET}\n")
        );
        // A locked hash is storable too.
        set_user(&p, "a", Some("g"), &format!("!{SHA256_SECRET}")).unwrap();
        assert_eq!(
            UserDb::load(&p).unwrap().verify("a", "secret"),
            VerifyOutcome::Locked
        );
    }

    #[test]
    fn set_user_rejects_bad_input_without_touching_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        for name in ["", "a:b", "tab\there", "#root", " pad", "nl\n"] {
            let e = set_user(&p, name, None, SHA256_SECRET).unwrap_err();
            assert!(
                matches!(e, UsersError::InvalidUsername { .. }),
                "{name:?}: {e:?}"
            );
        }
        assert!(matches!(
            set_user(&p, "a", Some("x:y"), SHA256_SECRET),
            Err(UsersError::InvalidGroup { .. })
        ));
        assert!(matches!(
            set_user(&p, "a", None, "plaintext"),
            Err(UsersError::InvalidHash { .. })
        ));
        assert!(!p.exists());
        // A file with a broken line elsewhere is not rewritten.
        fs::write(&p, "broken\n").unwrap();
        let e = set_user(&p, "a", None, SHA256_SECRET).unwrap_err();
        assert!(matches!(e, UsersError::Invalid { .. }), "{e:?}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "broken\n");
    }

    #[test]
    fn concurrent_edits_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        std::thread::scope(|s| {
            for i in 0..8 {
                let p = &p;
                s.spawn(move || set_user(p, &format!("user{i}"), None, SHA256_SECRET).unwrap());
            }
        });
        assert_eq!(UserDb::load(&p).unwrap().len(), 8);
    }
}
