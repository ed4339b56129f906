//! A minimal HTTP/1.1 client connection: keep-alive, `Content-Length` and chunked bodies, and a body
//! observer that timestamps the first byte, the first token and every SSE event as it arrives.

use std::io;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_CHUNK: usize = 64 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// What one response body looked like, observed while it streamed in.
#[derive(Default)]
pub struct BodyObserver {
    /// Look for SSE events, the first token and `message_stop` (off for JSON bodies).
    pub sse: bool,
    /// Keep every event's arrival time (for gaps between events).
    pub track_events: bool,
    pub first_byte: Option<Instant>,
    pub first_token: Option<Instant>,
    pub events: u32,
    pub saw_stop: bool,
    pub event_times: Vec<Instant>,
    pub bytes: usize,
    carry: Vec<u8>,
}

impl BodyObserver {
    pub fn new(sse: bool, track_events: bool) -> Self {
        BodyObserver {
            sse,
            track_events,
            ..Default::default()
        }
    }

    fn feed(&mut self, data: &[u8], now: Instant) {
        if data.is_empty() {
            return;
        }
        self.bytes += data.len();
        if self.first_byte.is_none() {
            self.first_byte = Some(now);
        }
        if !self.sse {
            return;
        }
        // Patterns may straddle two reads: search the previous tail plus this data, counting only
        // matches that end inside the new data.
        let mut window = std::mem::take(&mut self.carry);
        let old = window.len();
        window.extend_from_slice(data);
        // A match counts when it ends inside the new data (those ending in the carry were counted).
        let count_new = |pat: &[u8]| {
            memchr::memmem::find_iter(&window, pat)
                .filter(|i| i + pat.len() > old)
                .count()
        };
        let events = count_new(b"\n\n") as u32;
        if events > 0 {
            self.events += events;
            if self.track_events {
                for _ in 0..events {
                    self.event_times.push(now);
                }
            }
        }
        if self.first_token.is_none() && count_new(b"content_block_delta") > 0 {
            self.first_token = Some(now);
        }
        if !self.saw_stop && count_new(b"message_stop") > 0 {
            self.saw_stop = true;
        }
        let keep = window.len().min(24);
        self.carry = window[window.len() - keep..].to_vec();
    }
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Conn {
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(2 * READ_CHUNK),
            pos: 0,
        })
    }

    /// Read more bytes into the buffer; an orderly close before the response ended is an error.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let n = self.stream.read(&mut self.buf[len..]).await?;
        self.buf.truncate(len + n);
        Ok(n)
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Send one request and read its whole response; returns the status and whether the connection
    /// may be reused.
    pub async fn exchange(&mut self, request: &[u8], obs: &mut BodyObserver) -> io::Result<(u16, bool)> {
        self.stream.write_all(request).await?;
        // --- head
        let head_end = loop {
            if let Some(i) = find(self.available(), b"\r\n\r\n") {
                break self.pos + i + 4;
            }
            if self.available().len() > MAX_HEAD {
                return Err(bad("response head too large"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the response head",
                ));
            }
        };
        let head = std::str::from_utf8(&self.buf[self.pos..head_end]).map_err(|_| bad("head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut framing = Framing::UntilClose;
        let mut keep_alive = status_line.starts_with("HTTP/1.1");
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                framing = Framing::Length(value.parse().map_err(|_| bad("bad content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
                framing = Framing::Chunked;
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        self.pos = head_end;
        // --- body
        match framing {
            Framing::Length(mut left) => {
                while left > 0 {
                    if self.available().is_empty() && self.fill().await? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short"));
                    }
                    let take = left.min(self.available().len());
                    let now = Instant::now();
                    obs.feed(&self.buf[self.pos..self.pos + take], now);
                    self.pos += take;
                    left -= take;
                }
            }
            Framing::Chunked => self.read_chunked(obs).await?,
            Framing::UntilClose => {
                loop {
                    let now = Instant::now();
                    obs.feed(&self.buf[self.pos..], now);
                    self.pos = self.buf.len();
                    if self.fill().await? == 0 {
                        break;
                    }
                }
                keep_alive = false;
            }
        }
        Ok((status, keep_alive))
    }

    async fn read_chunked(&mut self, obs: &mut BodyObserver) -> io::Result<()> {
        loop {
            // chunk-size line
            let line_end = loop {
                if let Some(i) = find(self.available(), b"\r\n") {
                    break self.pos + i;
                }
                if self.fill().await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunked body cut short"));
                }
            };
            let line = std::str::from_utf8(&self.buf[self.pos..line_end]).map_err(|_| bad("bad chunk size"))?;
            let hex = line.split(';').next().unwrap_or("").trim();
            let mut left = usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
            self.pos = line_end + 2;
            if left == 0 {
                // trailers (none expected) end with an empty line
                loop {
                    if let Some(i) = find(self.available(), b"\r\n") {
                        self.pos += i + 2;
                        if i == 0 {
                            return Ok(());
                        }
                        continue;
                    }
                    if self.fill().await? == 0 {
                        return Ok(());
                    }
                }
            }
            while left > 0 {
                if self.available().is_empty() && self.fill().await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk cut short"));
                }
                let take = left.min(self.available().len());
                let now = Instant::now();
                obs.feed(&self.buf[self.pos..self.pos + take], now);
                self.pos += take;
                left -= take;
            }
            while self.available().len() < 2 {
                if self.fill().await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk end cut short"));
                }
            }
            self.pos += 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_across_reads() {
        let mut obs = BodyObserver::new(true, true);
        let now = Instant::now();
        obs.feed(b"event: ping\ndata: {}\n", now);
        obs.feed(b"\nevent: content_block_del", now);
        obs.feed(b"ta\ndata: {}\n\nevent: message_stop\ndata: {}\n\n", now);
        assert_eq!(obs.events, 3);
        assert!(obs.first_token.is_some());
        assert!(obs.saw_stop);
        assert_eq!(obs.event_times.len(), 3);
    }
}
