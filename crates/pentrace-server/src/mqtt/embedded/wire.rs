//! MQTT 3.1.1 packets on a TCP connection, framed by rumqttc's codec
//! (`rumqttc::mqttbytes::v4`): a reader that refuses a packet over its
//! limit from the fixed header alone, before its body is read, and a writer
//! that batches packets and gives up on a peer that does not read.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long a write may wait for a peer that does not read. Its own
/// keep-alive would have ended the connection by then.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest packet the server writes: downlinks are a few hundred bytes.
const MAX_OUTGOING: usize = 1 << 20;

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("a packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(CodecError),
    #[error("the peer did not read for {0:?}")]
    WriteTimeout(Duration),
}

impl WireError {
    /// The metric label of why the connection ended.
    pub fn label(&self) -> &'static str {
        match self {
            WireError::Closed | WireError::Io(_) => "closed",
            WireError::TooLarge(_) => "oversized_packet",
            WireError::Malformed(_) => "malformed",
            WireError::WriteTimeout(_) => "write_timeout",
        }
    }
}

/// The reading half: bytes read but not yet framed stay in `buffer`.
#[derive(Debug)]
pub(super) struct PacketReader {
    socket: OwnedReadHalf,
    buffer: BytesMut,
    /// Largest remaining length accepted (MQTT's "remaining length": the
    /// packet minus its 2–5 byte fixed header).
    max_packet_bytes: usize,
}

impl PacketReader {
    pub fn new(socket: OwnedReadHalf, max_packet_bytes: usize) -> PacketReader {
        PacketReader {
            socket,
            buffer: BytesMut::with_capacity(4096),
            max_packet_bytes,
        }
    }

    pub fn set_max_packet_bytes(&mut self, max: usize) {
        self.max_packet_bytes = max;
    }

    /// The next complete packet already read, if any.
    pub fn buffered(&mut self) -> Result<Option<Packet>, WireError> {
        match Packet::read(&mut self.buffer, self.max_packet_bytes) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(CodecError::PayloadSizeLimitExceeded(n)) => Err(WireError::TooLarge(n)),
            Err(e) => Err(WireError::Malformed(e)),
        }
    }

    /// Reads more bytes. Cancel-safe (a `select!` branch): bytes read are
    /// kept in the buffer.
    pub async fn fill(&mut self) -> Result<(), WireError> {
        // Room for a typical packet; a larger one grows the buffer up to
        // the limit checked in `buffered`, never beyond.
        self.buffer.reserve(4096);
        match self.socket.read_buf(&mut self.buffer).await? {
            0 => Err(WireError::Closed),
            _ => Ok(()),
        }
    }

    /// Reads and discards until the peer closes, for at most `within`: a
    /// socket closed with unread bytes sends a reset, which can make the
    /// peer drop what it has not read yet — the last PUBACKs among them.
    pub async fn drain(mut self, within: Duration) {
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(within, async {
            while let Ok(n) = self.socket.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// The next packet, reading as needed.
    pub async fn next(&mut self) -> Result<Packet, WireError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }
}

/// The writing half: packets are encoded into a buffer and written by
/// [`PacketWriter::flush`].
#[derive(Debug)]
pub(super) struct PacketWriter {
    socket: OwnedWriteHalf,
    buffer: BytesMut,
}

impl PacketWriter {
    pub fn new(socket: OwnedWriteHalf) -> PacketWriter {
        PacketWriter {
            socket,
            buffer: BytesMut::with_capacity(1024),
        }
    }

    /// Encodes a packet for the next flush.
    pub fn queue(&mut self, packet: &Packet) {
        if let Err(e) = packet.write(&mut self.buffer, MAX_OUTGOING) {
            // Only a downlink over 1 MiB could fail: a bug, not the peer's doing.
            tracing::error!(error = %e, "cannot encode an mqtt packet; dropped");
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.socket.write_all(&self.buffer))
            .await
            .map_err(|_| WireError::WriteTimeout(WRITE_TIMEOUT))?;
        self.buffer.clear();
        written.map_err(WireError::Io)
    }

    /// Writes what is queued and closes the sending side.
    pub async fn close(mut self) {
        if self.flush().await.is_ok() {
            let _ = self.socket.shutdown().await;
        }
    }
}
