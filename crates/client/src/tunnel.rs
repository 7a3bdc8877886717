//! A live CSTP tunnel on the client side: IP packets out as DATA frames, frames in.
//!
//! Each frame goes to rustls as its own write, so it becomes its own TLS record (openconnect and
//! ocserv both need that, protocol doc §1 item 6); frames are queued and sent with one flush, so a
//! burst costs one socket write. Incoming bytes are read into one growing buffer and frames are cut
//! from it without copying. DPD requests from the server are answered automatically; DISCONNECT and
//! TERMINATE end the tunnel with [`ClientError::Disconnected`].

use std::io::Write as _;
use std::net::Ipv4Addr;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tunnel_proto::connect_client::ConnectReply;
use tunnel_proto::cstp::{self, FrameType};

use crate::error::ClientError;

/// Bytes reserved before each read.
const READ_RESERVE: usize = 16 * 1024;
/// Largest frame payload accepted from the server (any MTU up to a 64 KiB link).
const MAX_PAYLOAD: usize = cstp::MAX_PAYLOAD;

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its type.
    pub kind: FrameType,
    /// Its payload (for DATA, one IP packet). Shares the read buffer: no copy.
    pub payload: Bytes,
}

/// The client end of a tunnel. Dropping it closes the connection without a logout (the server
/// keeps the session for a cookie reconnect).
#[derive(Debug)]
pub struct Tunnel {
    tls: TlsStream<TcpStream>,
    rbuf: BytesMut,
    scratch: Vec<u8>,
    reply: ConnectReply,
    pending: bool,
}

impl Tunnel {
    pub(crate) fn new(mut tls: TlsStream<TcpStream>, rbuf: BytesMut, reply: ConnectReply) -> Self {
        // Whole frames must reach rustls unsplit; the caller bounds what it queues before a flush.
        tls.get_mut().1.set_buffer_limit(None);
        Self {
            tls,
            rbuf,
            scratch: Vec::with_capacity(2048),
            reply,
            pending: false,
        }
    }

    /// What the server pushed in its CONNECT answer (address, MTU, timers).
    #[must_use]
    pub fn reply(&self) -> &ConnectReply {
        &self.reply
    }

    /// The IPv4 address the server assigned (the source of every packet we send).
    #[must_use]
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.reply.ipv4
    }

    /// Queues one frame as its own TLS record; [`Self::flush`] sends what is queued.
    pub fn queue(&mut self, kind: FrameType, payload: &[u8]) -> Result<(), ClientError> {
        self.scratch.clear();
        cstp::encode(kind, payload, &mut self.scratch)?;
        self.tls.get_mut().1.writer().write_all(&self.scratch)?;
        self.pending = true;
        Ok(())
    }

    /// Queues one IP packet as a DATA frame.
    pub fn queue_data(&mut self, packet: &[u8]) -> Result<(), ClientError> {
        self.queue(FrameType::Data, packet)
    }

    /// True if frames are queued but not flushed (e.g. an automatic DPD answer).
    #[must_use]
    pub fn has_pending(&self) -> bool {
        self.pending
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.tls.flush().await?;
        self.pending = false;
        Ok(())
    }

    /// Queues and sends one IP packet.
    pub async fn send_data(&mut self, packet: &[u8]) -> Result<(), ClientError> {
        self.queue_data(packet)?;
        self.flush().await
    }

    /// The next complete frame already read, if any. DPD requests are answered (queued; flush to
    /// send); DISCONNECT and TERMINATE end the tunnel with an error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        let Some(header) = cstp::parse_header(&self.rbuf, MAX_PAYLOAD)? else {
            return Ok(None);
        };
        if self.rbuf.len() < header.frame_len() {
            return Ok(None);
        }
        self.rbuf.advance(cstp::HEADER_LEN);
        let payload = self.rbuf.split_to(header.payload_len).freeze();
        match header.kind {
            FrameType::DpdRequest => self.queue(FrameType::DpdResponse, &payload)?,
            FrameType::Disconnect | FrameType::Terminate => {
                let reason = cstp::disconnect_reason(&payload).map(str::to_owned);
                return Err(ClientError::Disconnected(reason));
            }
            _ => {}
        }
        Ok(Some(Frame {
            kind: header.kind,
            payload,
        }))
    }

    /// Reads more bytes from the server (cancel-safe: use it in `select!`). A closed connection is
    /// [`ClientError::Closed`].
    pub async fn read(&mut self) -> Result<(), ClientError> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(READ_RESERVE);
        }
        match self.tls.read_buf(&mut self.rbuf).await? {
            0 => Err(ClientError::Closed { stage: "tunnel" }),
            _ => Ok(()),
        }
    }

    /// The next frame, reading as needed (and sending any automatic DPD answer first).
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            if self.pending {
                self.flush().await?;
            }
            self.read().await?;
        }
    }

    /// Logs out: DISCONNECT with the logout code, then waits (at most `wait`) for the server to
    /// close the connection, which it does once the session is ended and its address is free.
    /// Returns whether the server closed within `wait`.
    pub async fn logout(mut self, wait: std::time::Duration) -> Result<bool, ClientError> {
        let mut payload = Vec::with_capacity(16);
        payload.push(cstp::LOGOUT_CODE);
        payload.extend_from_slice(b"User logged out");
        self.queue(FrameType::Disconnect, &payload)?;
        self.flush().await?;
        let closed = tokio::time::timeout(wait, async {
            loop {
                self.rbuf.clear();
                match self.read().await {
                    Ok(()) => {}
                    Err(_) => break,
                }
            }
        })
        .await
        .is_ok();
        let _ = tokio::time::timeout(wait, self.tls.shutdown()).await;
        Ok(closed)
    }

    /// Drops the connection abruptly (TCP reset, no logout): what a device losing its network
    /// looks like to the server. The session stays for a cookie reconnect.
    pub fn abort(self) {
        let _ = self.tls.get_ref().0.set_zero_linger();
    }
}
