//! The record layer of an established DTLS 1.2 channel, done here instead of by OpenSSL; the
//! gateway and the Rust client both use it.
//!
//! OpenSSL runs the handshake (PSK, cookies, retransmits). When it completes with an AES-GCM
//! suite, [`Channel::take_over`] derives the channel's traffic keys from the session's master
//! secret and the two hello randoms (RFC 5246 §6.3, the TLS 1.2 PRF) and from then on every record
//! is sealed and opened here, in place in the caller's own buffers, with aws-lc. Through
//! OpenSSL's `SSL_read`/`SSL_write` and a BIO, each record was copied into OpenSSL's buffer and out
//! again, and each call paid OpenSSL 3's per-record parameter lookups. ChaCha20-Poly1305 (offered
//! last by the gateway, never chosen by openconnect) stays with OpenSSL: `take_over` says `None`.
//!
//! Records (RFC 6347 §4.1, RFC 5288 §3): a 13-byte header, an 8-byte explicit nonce (here the
//! record's epoch and sequence number, unique per key, as OpenSSL writes it), the ciphertext and a
//! 16-byte tag; the nonce is the 4-byte salt from the key block followed by the explicit nonce, the
//! additional data the epoch and sequence number, type, version and plaintext length. Received
//! records pass the anti-replay window before they are decrypted.
//!
//! Sequence numbers go on from the last record OpenSSL wrote in the epoch ([`last_epoch_seq`]
//! finds it in OpenSSL's output), and OpenSSL never writes on the channel again: a record it
//! wrote later would reuse a sequence number, and so an AES-GCM nonce. In the full PSK handshake
//! the server sends the last flight (ChangeCipherSpec, Finished). If it is lost the client sends
//! its own last flight again; OpenSSL would answer with a Finished under a fresh sequence number,
//! so the server's [`Channel`] keeps the flight as sent and sends it again byte for byte, until
//! the client's first application data shows it has it. The client has no such flight to keep: it
//! completes when the server's last flight arrives, and a copy of it arriving later is ignored.

use crate::dtls::{
    records, RecordHeader, ReplayWindow, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, DTLS12, MAX_SEQ, RECORD_HEADER_LEN,
};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use aws_lc_rs::hmac;
use openssl::ssl::{SslRef, SslVersion};

/// Bytes of the explicit nonce in front of each record's ciphertext.
const EXPLICIT_NONCE_LEN: usize = 8;
/// Bytes of the AES-GCM tag after each record's ciphertext.
const TAG_LEN: usize = 16;
/// Bytes of the implicit part of the nonce (the salt from the key block).
const SALT_LEN: usize = NONCE_LEN - EXPLICIT_NONCE_LEN;
/// The epoch the first handshake's keys are used in.
const EPOCH: u16 = 1;
/// Bytes of the TLS 1.2 master secret.
const MASTER_LEN: usize = 48;
/// Bytes of a hello random.
const RANDOM_LEN: usize = 32;
/// The plaintext of a close_notify alert: level warning, description close_notify.
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Which end of the channel this is: it decides which half of the key block seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that sent the ClientHello.
    Client,
    /// The end that answered it.
    Server,
}

/// The highest sequence number of an epoch-1 record in datagrams OpenSSL wrote (`sent`, back to
/// back, with their lengths `lens`), if there is one.
#[must_use]
pub fn last_epoch_seq(sent: &[u8], lens: &[usize]) -> Option<u64> {
    let mut last = None;
    let mut off = 0;
    for &len in lens {
        let d = sent.get(off..off + len)?;
        off += len;
        for (h, _) in records(d) {
            if h.epoch == EPOCH {
                last = last.max(Some(h.seq));
            }
        }
    }
    last
}

/// One direction's key and salt.
struct Keys {
    key: LessSafeKey,
    salt: [u8; SALT_LEN],
}

impl Keys {
    fn new(alg: &'static aead::Algorithm, key: &[u8], salt: &[u8]) -> Option<Self> {
        Some(Self {
            key: LessSafeKey::new(UnboundKey::new(alg, key).ok()?),
            salt: salt.try_into().ok()?,
        })
    }

    fn nonce(&self, explicit: [u8; EXPLICIT_NONCE_LEN]) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        let (salt, rest) = n.split_at_mut(SALT_LEN);
        salt.copy_from_slice(&self.salt);
        rest.copy_from_slice(&explicit);
        Nonce::assume_unique_for_key(n)
    }
}

/// The additional data of a record: epoch and sequence number, type, version, plaintext length.
fn aad(h: &RecordHeader, plain_len: usize) -> Aad<[u8; 13]> {
    let [s0, s1, s2, s3, s4, s5, s6, s7] = h.epoch_seq();
    let [v0, v1] = h.version;
    let [l0, l1] = u16::try_from(plain_len).unwrap_or(u16::MAX).to_be_bytes();
    Aad::from([s0, s1, s2, s3, s4, s5, s6, s7, h.content, v0, v1, l0, l1])
}

/// What one received record was.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Application data, decrypted in place: the type byte and payload (§7.6).
    Data(&'a [u8]),
    /// A close_notify or fatal alert: the channel is over.
    Closed,
    /// A warning alert other than close_notify; ignored.
    Warning,
    /// A record of the handshake: on the server the client's last flight again, which
    /// [`Channel::resend_final`] answers; on the client a copy of the server's, to ignore.
    Handshake,
}

/// Why a received record was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Seen before, or older than the replay window.
    Replayed,
    /// Not of this epoch, an unknown type, too short, or failed authentication.
    Bad,
}

/// The established channel's record layer.
pub struct Channel {
    open: Keys,
    seal: Keys,
    next_seq: u64,
    replay: ReplayWindow,
    /// The server's last flight (datagrams and their lengths), while the client may need it
    /// again; always `None` on the client.
    final_flight: Option<(Vec<u8>, Vec<usize>)>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// The TLS 1.2 PRF (RFC 5246 §5): `P_hash(secret, label + seed)` into `out`.
fn prf(alg: hmac::Algorithm, secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let key = hmac::Key::new(alg, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(label);
    ctx.update(seed);
    let mut a = ctx.sign();
    for chunk in out.chunks_mut(alg.digest_algorithm().output_len()) {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(a.as_ref());
        ctx.update(label);
        ctx.update(seed);
        let block = ctx.sign();
        if let Some(b) = block.as_ref().get(..chunk.len()) {
            chunk.copy_from_slice(b);
        }
        a = hmac::sign(&key, a.as_ref());
    }
}

impl Channel {
    /// Takes the established channel over from OpenSSL: `ssl` has just completed its handshake
    /// as `role`, `last_seq` is the highest epoch-1 sequence number OpenSSL wrote (see
    /// [`last_epoch_seq`]), and `final_flight` the server's last flight as sent (datagrams back to
    /// back, and their lengths), to send again if the client asks. `None` when the suite is not
    /// AES-GCM or OpenSSL cannot give the secrets: OpenSSL keeps the channel then.
    #[must_use]
    pub fn take_over(
        ssl: &SslRef,
        role: Role,
        last_seq: u64,
        final_flight: Option<(Vec<u8>, Vec<usize>)>,
    ) -> Option<Self> {
        if ssl.version2() != Some(SslVersion::DTLS1_2) {
            return None;
        }
        let (alg, prf_alg) = match ssl.current_cipher()?.name() {
            "PSK-AES128-GCM-SHA256" => (&aead::AES_128_GCM, hmac::HMAC_SHA256),
            "PSK-AES256-GCM-SHA384" => (&aead::AES_256_GCM, hmac::HMAC_SHA384),
            _ => return None,
        };
        let mut master = [0u8; MASTER_LEN];
        if ssl.session()?.master_key(&mut master) != MASTER_LEN {
            return None;
        }
        // key expansion's seed is server_random + client_random.
        let mut seed = [0u8; 2 * RANDOM_LEN];
        let (server_random, client_random) = seed.split_at_mut(RANDOM_LEN);
        if ssl.server_random(server_random) != RANDOM_LEN
            || ssl.client_random(client_random) != RANDOM_LEN
        {
            return None;
        }
        // GCM has no MAC keys: client key, server key, client salt, server salt.
        let k = alg.key_len();
        let mut block = [0u8; 2 * 32 + 2 * SALT_LEN];
        let block = block.get_mut(..2 * k + 2 * SALT_LEN)?;
        prf(prf_alg, &master, b"key expansion", &seed, block);
        master.fill(0);
        let (client_key, rest) = block.split_at(k);
        let (server_key, rest) = rest.split_at(k);
        let (client_salt, server_salt) = rest.split_at(SALT_LEN);
        let client = Keys::new(alg, client_key, client_salt);
        let server = Keys::new(alg, server_key, server_salt);
        block.fill(0);
        let (open, seal) = match role {
            Role::Server => (client?, server?),
            Role::Client => (server?, client?),
        };
        Some(Self {
            open,
            seal,
            next_seq: last_seq.checked_add(1)?,
            replay: ReplayWindow::new(),
            final_flight: final_flight.filter(|_| role == Role::Server),
        })
    }

    /// Appends one application-data record carrying `plain` (type byte and payload) to `out` and
    /// returns its length; `None` (and `out` unchanged) once the epoch's sequence numbers are
    /// used up, which ends the channel.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        self.seal_record(CONTENT_APPLICATION_DATA, plain, out)
    }

    /// Appends a close_notify alert to `out` and returns its length, as [`Self::seal`] does.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Option<usize> {
        self.seal_record(CONTENT_ALERT, &CLOSE_NOTIFY, out)
    }

    fn seal_record(&mut self, content: u8, plain: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let seq = self.next_seq;
        if seq > MAX_SEQ {
            return None;
        }
        let h = RecordHeader {
            content,
            version: DTLS12,
            epoch: EPOCH,
            seq,
            len: EXPLICIT_NONCE_LEN + plain.len() + TAG_LEN,
        };
        let start = out.len();
        out.reserve(RECORD_HEADER_LEN + h.len);
        out.extend_from_slice(&h.to_bytes());
        let explicit = h.epoch_seq();
        out.extend_from_slice(&explicit);
        let body = out.len();
        out.extend_from_slice(plain);
        let sealed = out.get_mut(body..).and_then(|b| {
            self.seal
                .key
                .seal_in_place_separate_tag(self.seal.nonce(explicit), aad(&h, plain.len()), b)
                .ok()
        });
        let Some(tag) = sealed else {
            out.truncate(start);
            return None;
        };
        out.extend_from_slice(tag.as_ref());
        self.next_seq += 1;
        Some(out.len() - start)
    }

    /// Appends the server's last handshake flight, as it was first sent, to `out`/`lens` while
    /// the client may still be missing it (until its first application data).
    pub fn resend_final(&self, out: &mut Vec<u8>, lens: &mut Vec<usize>) {
        if let Some((flight, flight_lens)) = &self.final_flight {
            out.extend_from_slice(flight);
            lens.extend_from_slice(flight_lens);
        }
    }

    /// Opens one received record (`record`: header and body, as [`records`] splits a datagram),
    /// in place.
    pub fn open<'a>(
        &mut self,
        h: &RecordHeader,
        record: &'a mut [u8],
    ) -> Result<Opened<'a>, Refused> {
        if h.content == CONTENT_HANDSHAKE || h.content == CONTENT_CHANGE_CIPHER_SPEC {
            return Ok(Opened::Handshake);
        }
        if h.epoch != EPOCH
            || h.version != DTLS12
            || !(h.content == CONTENT_APPLICATION_DATA || h.content == CONTENT_ALERT)
        {
            return Err(Refused::Bad);
        }
        if !self.replay.check(h.seq) {
            return Err(Refused::Replayed);
        }
        let body = record.get_mut(RECORD_HEADER_LEN..).ok_or(Refused::Bad)?;
        let plain_len = body
            .len()
            .checked_sub(EXPLICIT_NONCE_LEN + TAG_LEN)
            .ok_or(Refused::Bad)?;
        let (explicit, sealed) = body.split_at_mut(EXPLICIT_NONCE_LEN);
        let explicit: [u8; EXPLICIT_NONCE_LEN] =
            (&*explicit).try_into().map_err(|_| Refused::Bad)?;
        let plain = self
            .open
            .key
            .open_in_place(self.open.nonce(explicit), aad(h, plain_len), sealed)
            .map_err(|_| Refused::Bad)?;
        self.replay.mark(h.seq);
        if h.content == CONTENT_ALERT {
            // level 2 is fatal; description 0 is close_notify.
            return Ok(match plain {
                [2, _] | [_, 0] => Opened::Closed,
                _ => Opened::Warning,
            });
        }
        // The client sends application data only once it has the server's Finished.
        self.final_flight = None;
        Ok(Opened::Data(plain))
    }
}
