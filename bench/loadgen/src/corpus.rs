//! The request corpus written by `bench/traffic.py` (`stream<TAB>session id<TAB>body` a line), with the
//! per-pass token filled in, so each pass over the corpus is new traffic that still chains into
//! conversations.

use std::fs;
use std::io;

pub const TOKEN: &[u8] = b"@@NX@@";

pub struct Entry {
    pub stream: bool,
    sid: Vec<Vec<u8>>,
    body: Vec<Vec<u8>>,
    /// Body bytes without the tokens.
    body_len: usize,
}

pub struct Corpus {
    pub entries: Vec<Entry>,
    head_prefix: Vec<u8>,
    salt: u8,
}

fn split_token(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = memchr::memmem::find(rest, TOKEN) {
        out.push(rest[..i].to_vec());
        rest = &rest[i + TOKEN.len()..];
    }
    out.push(rest.to_vec());
    out
}

fn join(parts: &[Vec<u8>], token: &[u8], out: &mut Vec<u8>) {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(token);
        }
        out.extend_from_slice(part);
    }
}

impl Corpus {
    /// `kind` keeps `json`, `stream` or `all` lines; `headers` are `name: value` lines sent on every request.
    pub fn load(
        path: &str,
        kind: &str,
        headers: &[String],
        host: &str,
        req_path: &str,
        salt: u8,
    ) -> io::Result<Corpus> {
        let data = fs::read(path)?;
        let mut entries = Vec::new();
        for line in data.split(|b| *b == b'\n') {
            if line.len() < 4 {
                continue;
            }
            let mut fields = line.splitn(3, |b| *b == b'\t');
            let (Some(flag), Some(sid), Some(body)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let stream = flag == b"1";
            if (kind == "json" && stream) || (kind == "stream" && !stream) {
                continue;
            }
            let body_parts = split_token(body);
            let tokens = body_parts.len() - 1;
            entries.push(Entry {
                stream,
                sid: split_token(sid),
                body_len: body.len() - tokens * TOKEN.len(),
                body: body_parts,
            });
        }
        if entries.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no {kind} lines in {path}"),
            ));
        }
        let mut head_prefix = Vec::new();
        head_prefix.extend_from_slice(format!("POST {req_path} HTTP/1.1\r\nhost: {host}\r\n").as_bytes());
        for h in headers {
            head_prefix.extend_from_slice(h.trim().as_bytes());
            head_prefix.extend_from_slice(b"\r\n");
        }
        Ok(Corpus {
            entries,
            head_prefix,
            salt,
        })
    }

    /// The `n`-th request of this run (wrapping around the corpus, a new token each pass) into `out`.
    pub fn request(&self, n: u64, out: &mut Vec<u8>) -> bool {
        let len = self.entries.len() as u64;
        let entry = &self.entries[(n % len) as usize];
        let pass = (n / len) & 0xffff;
        let token = format!("{:02x}{:04x}", self.salt, pass);
        out.clear();
        out.extend_from_slice(&self.head_prefix);
        out.extend_from_slice(b"x-claude-code-session-id: ");
        join(&entry.sid, token.as_bytes(), out);
        let length = entry.body_len + (entry.body.len() - 1) * token.len();
        out.extend_from_slice(format!("\r\ncontent-length: {length}\r\n\r\n").as_bytes());
        join(&entry.body, token.as_bytes(), out);
        entry.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_filled_per_pass() {
        let path = std::env::temp_dir().join(format!("loadgen-corpus-{}.txt", std::process::id()));
        fs::write(&path, b"1\tsid-@@NX@@\t{\"a\":\"x@@NX@@y\"}\n0\tsid2\t{\"b\":1}\n").unwrap();
        let c = Corpus::load(
            path.to_str().unwrap(),
            "all",
            &["x-app: cli".into()],
            "h:1",
            "/v1/messages",
            3,
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(c.request(2, &mut out));
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("x-claude-code-session-id: sid-030001\r\n"), "{text}");
        assert!(
            text.ends_with("content-length: 16\r\n\r\n{\"a\":\"x030001y\"}"),
            "{text}"
        );
        assert!(!c.request(1, &mut out));
        fs::remove_file(path).unwrap();
    }
}
