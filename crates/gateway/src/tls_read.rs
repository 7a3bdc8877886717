//! Reading a tunnel's TLS connection in batches.
//!
//! Through `tokio-rustls`, every read of the socket was rustls's own `read_tls`, which asks the
//! socket for about 4 KiB at a time: an upload at 1 Gbit/s made some 28,000 `recvfrom` calls a
//! second, most of the tunnel's syscalls. Here one `recv` takes up to [`READ_AHEAD`] bytes into
//! the thread's scratch buffer, and rustls is fed from memory until all of it is decrypted into
//! the session's own plaintext buffer. The scratch buffer is per thread, not per session: nothing
//! is left in it between calls, so an idle session costs no more memory than before.

use std::cell::RefCell;
use std::io::{self, BufRead as _, Read as _};

use bytes::BytesMut;
use rustls::ServerConnection;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes one `recv` may take from the socket.
const READ_AHEAD: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_AHEAD]);
}

/// What a read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Read {
    /// Plaintext bytes appended (zero if the records carried none, e.g. a key update).
    pub(crate) bytes: usize,
    /// The client closed the connection (close_notify, or TCP EOF after it): the bytes are the
    /// last there will be.
    pub(crate) closed: bool,
}

/// Moves every record rustls holds into `plain`: decrypts what is buffered and appends the
/// plaintext.
///
/// # Errors
/// A record that does not decrypt or parse (`InvalidData`; rustls has queued an alert to send),
/// or the connection closed without close_notify (`UnexpectedEof`).
pub(crate) fn take_buffered(conn: &mut ServerConnection, plain: &mut BytesMut) -> io::Result<Read> {
    let state = conn
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut bytes = 0;
    let mut reader = conn.reader();
    loop {
        match reader.fill_buf() {
            Ok([]) => break,
            Ok(chunk) => {
                let len = chunk.len();
                plain.extend_from_slice(chunk);
                reader.consume(len);
                bytes += len;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(Read {
        bytes,
        closed: state.peer_has_closed(),
    })
}

/// One `recv` into `scratch`. A read that leaves room in `scratch` emptied the socket's queue, so
/// it also clears the socket's readiness: the task then waits for the next readiness event instead
/// of calling `recv` again only to get `EAGAIN` (and, while packets keep trickling in, instead of
/// chasing them a few at a time: with `server.rx_coalesce_usecs` they are taken in one batch after
/// the thread's nap). Data that arrives after the `recv` raises a new edge-triggered event, so
/// nothing is missed, and tokio never clears a read-closed state, so an EOF that came with the
/// last data is still seen.
fn recv_draining(tcp: &TcpStream, scratch: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    let room = scratch.len();
    let read = tcp.try_io(Interest::READABLE, || {
        got = (&*socket2::SockRef::from(tcp)).read(scratch)?;
        if got > 0 && got < room {
            // Not an error: tells tokio to clear the readiness it saw before this recv.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        Err(e) => Err(e),
        Ok(()) => Ok(got),
    }
}

/// Reads what the socket has, with one `recv`, and decrypts all of it into `plain`.
///
/// # Errors
/// `WouldBlock` when the socket had nothing (its readiness was stale), a socket error, a record
/// that does not decrypt (`InvalidData`; flush the connection to send rustls's alert), or EOF
/// without close_notify (`UnexpectedEof`).
pub(crate) fn read_available(
    tcp: &TcpStream,
    conn: &mut ServerConnection,
    plain: &mut BytesMut,
) -> io::Result<Read> {
    SCRATCH.with_borrow_mut(|scratch| {
        let got = recv_draining(tcp, scratch)?;
        let mut rest = scratch.get(..got).unwrap_or_default();
        if got == 0 {
            // EOF: rustls tells a clean close (close_notify seen) from a truncation.
            conn.read_tls(&mut rest)?;
            let read = take_buffered(conn, plain)?;
            return Ok(Read {
                closed: true,
                ..read
            });
        }
        let mut total = Read {
            bytes: 0,
            closed: false,
        };
        while !rest.is_empty() && !total.closed {
            conn.read_tls(&mut rest)?;
            let read = take_buffered(conn, plain)?;
            total.bytes += read.bytes;
            total.closed = read.closed;
        }
        Ok(total)
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    use super::*;

    /// A loopback TCP pair with a TLS handshake done: the server's socket and connection, and
    /// the client's socket and (sans-IO) connection.
    async fn pair() -> (
        TcpStream,
        ServerConnection,
        TcpStream,
        rustls::ClientConnection,
    ) {
        let (server_cfg, client_cfg) = crate::tls::tests::config_pair();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut ctcp, (mut stcp, _)) = (client.unwrap(), accepted.unwrap());
        let mut c =
            rustls::ClientConnection::new(client_cfg, "vpn.test".try_into().unwrap()).unwrap();
        let mut s = ServerConnection::new(server_cfg).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            pump(&mut c, &mut ctcp, &mut s, &mut stcp).await;
            pump(&mut s, &mut stcp, &mut c, &mut ctcp).await;
        }
        (stcp, s, ctcp, c)
    }

    /// Sends what `from` has queued over the sockets and feeds it to `to`.
    async fn pump<A, B>(from: &mut A, ftcp: &mut TcpStream, to: &mut B, ttcp: &mut TcpStream)
    where
        A: std::ops::DerefMut<Target = rustls::ConnectionCommon<<A as Side>::Data>> + Side,
        B: std::ops::DerefMut<Target = rustls::ConnectionCommon<<B as Side>::Data>> + Side,
    {
        let mut out = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut out).unwrap();
        }
        if out.is_empty() {
            return;
        }
        ftcp.write_all(&out).await.unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; out.len()];
        while got < out.len() {
            ttcp.readable().await.unwrap();
            if let Ok(n) = ttcp.try_read(&mut buf[got..]) {
                got += n;
            }
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
        }
        to.process_new_packets().unwrap();
    }

    trait Side {
        type Data;
    }
    impl Side for rustls::ClientConnection {
        type Data = rustls::client::ClientConnectionData;
    }
    impl Side for ServerConnection {
        type Data = rustls::server::ServerConnectionData;
    }

    /// Sends the client's queued records.
    async fn send(c: &mut rustls::ClientConnection, tcp: &mut TcpStream) {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        tcp.write_all(&out).await.unwrap();
    }

    /// Reads until `want` plaintext bytes or the close (or an error).
    async fn read_all(
        tcp: &TcpStream,
        conn: &mut ServerConnection,
        want: usize,
    ) -> (BytesMut, io::Result<Read>) {
        let mut plain = BytesMut::new();
        loop {
            tokio::time::timeout(std::time::Duration::from_secs(10), tcp.readable())
                .await
                .expect("the socket went quiet before the data was read")
                .unwrap();
            match read_available(tcp, conn, &mut plain) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(r) if !r.closed && plain.len() < want => {}
                r => return (plain, r),
            }
        }
    }

    #[tokio::test]
    async fn a_short_read_waits_for_new_data_instead_of_reading_again() {
        let (stcp, mut s, mut ctcp, mut c) = pair().await;
        let mut plain = BytesMut::new();
        for (i, word) in [&b"first"[..], b"second", b"third"].into_iter().enumerate() {
            c.writer().write_all(word).unwrap();
            send(&mut c, &mut ctcp).await;
            let read = loop {
                tokio::time::timeout(std::time::Duration::from_secs(10), stcp.readable())
                    .await
                    .expect("new data makes the socket readable")
                    .unwrap();
                match read_available(&stcp, &mut s, &mut plain) {
                    // Readiness left from the handshake, or the record still on its way.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => break r.unwrap(),
                }
            };
            assert_eq!(read.bytes, word.len(), "record {i}");
            // The read left room in the buffer: the queue is empty and readiness is cleared, so
            // the task waits for the next data rather than calling recv again for EAGAIN.
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), stcp.readable())
                    .await
                    .is_err(),
                "the socket still looks readable after record {i} was read"
            );
        }
        assert_eq!(&plain[..], b"firstsecondthird");
    }

    #[tokio::test]
    async fn records_spanning_many_reads_arrive_whole_and_in_order() {
        let (stcp, mut s, mut ctcp, mut c) = pair().await;
        // 1,000 records of 1,400 bytes (1.4 MB, many 64 KiB reads; records cut at read
        // boundaries), written by another task while this one reads.
        let data: Vec<u8> = (0..1000 * 1400).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for batch in sent.chunks(20 * 1400) {
                for chunk in batch.chunks(1400) {
                    c.writer().write_all(chunk).unwrap();
                }
                send(&mut c, &mut ctcp).await;
            }
            (c, ctcp)
        });
        let (plain, r) = read_all(&stcp, &mut s, data.len()).await;
        assert!(!r.unwrap().closed);
        assert_eq!(plain.len(), data.len());
        assert!(plain[..] == data[..], "plaintext differs");
        let _ = writer.await.unwrap();
    }

    #[tokio::test]
    async fn data_then_close_notify_gives_the_data_and_says_closed() {
        let (stcp, mut s, mut ctcp, mut c) = pair().await;
        c.writer().write_all(b"logout frame").unwrap();
        c.send_close_notify();
        send(&mut c, &mut ctcp).await;
        let (plain, r) = read_all(&stcp, &mut s, usize::MAX).await;
        assert_eq!(&plain[..], b"logout frame");
        assert!(r.unwrap().closed);
    }

    #[tokio::test]
    async fn eof_without_close_notify_is_an_unexpected_eof() {
        let (stcp, mut s, mut ctcp, mut c) = pair().await;
        c.writer().write_all(b"partial").unwrap();
        send(&mut c, &mut ctcp).await;
        ctcp.shutdown().await.unwrap();
        let (plain, r) = read_all(&stcp, &mut s, usize::MAX).await;
        assert_eq!(&plain[..], b"partial");
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_tampered_record_is_invalid_data_and_an_alert_is_queued() {
        let (stcp, mut s, mut ctcp, mut c) = pair().await;
        c.writer().write_all(b"genuine").unwrap();
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        let last = out.len() - 1;
        out[last] ^= 1;
        ctcp.write_all(&out).await.unwrap();
        let (plain, r) = read_all(&stcp, &mut s, usize::MAX).await;
        assert!(plain.is_empty());
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(s.wants_write(), "an alert waits to be sent");
    }
}
