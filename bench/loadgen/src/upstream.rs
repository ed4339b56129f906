//! `nexus-loadgen upstream`: a fast mock of the Anthropic Messages API for throughput runs, where the
//! project's Python fake (nexus/fake_upstream/server.py, ~4k req/s on one core here) would be the
//! bound. It speaks the same wire format as that fake for a normal answer: JSON with `content-length`,
//! or an SSE stream (chunked) in the API's event order, a `request-id` and `anthropic-ratelimit-*`
//! headers, usage with `input_tokens` = body bytes / 4. `x-fake-scenario: event-delay:<ms>` paces the
//! events, `x-fake-text-tokens: <n>` sets the reply length. Nothing else of the fake (errors, faults,
//! tools, recording) is mimicked: the harness only needs the happy path, fast.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WORDS: [&str; 14] = [
    "Hello!",
    "This",
    "is",
    "a",
    "deterministic",
    "reply",
    "from",
    "the",
    "fake",
    "Anthropic",
    "API:",
    "naïve",
    "café",
    "✓.",
];

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn reply_text(tokens: usize) -> Vec<&'static str> {
    (0..tokens).map(|i| WORDS[i % WORDS.len()]).collect()
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Reply {
    id: String,
    model: String,
    input_tokens: usize,
    words: Vec<&'static str>,
    /// `(name, input JSON)` of the tool the prompt asked for with the fake's `[[use_tool:...]]` marker.
    tool: Option<(String, String)>,
}

/// The fake upstream's marker in the last user turn: `[[use_tool:NAME {json}]]` (inside a JSON string,
/// so its quotes arrive escaped). None when the last turn is a tool result or has no marker.
fn tool_call(body: &[u8]) -> Option<(String, String)> {
    let pos = memchr::memmem::rfind(body, b"[[use_tool:")?;
    let after = &body[pos..];
    if find(after, b"\"tool_result\"").is_some() || find(after, b"\"role\":\"assistant\"").is_some() {
        return None;
    }
    let rest = &after[11..];
    let name_end = rest
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'))?;
    let name = std::str::from_utf8(&rest[..name_end]).ok()?.to_string();
    let tail = &rest[name_end..];
    let input = if tail.first() == Some(&b' ') && tail.get(1) == Some(&b'{') {
        let end = find(tail, b"}]]")?;
        let mut out = Vec::with_capacity(end);
        let raw = &tail[1..=end];
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'\\' && i + 1 < raw.len() && (raw[i + 1] == b'"' || raw[i + 1] == b'\\') {
                out.push(raw[i + 1]);
                i += 2;
            } else {
                out.push(raw[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()?
    } else {
        "{}".to_string()
    };
    Some((name, input))
}

impl Reply {
    fn usage(&self, output: usize) -> String {
        format!(
            "{{\"input_tokens\":{},\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\
             \"cache_creation\":{{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0}},\
             \"output_tokens\":{},\"service_tier\":\"standard\"}}",
            self.input_tokens, output
        )
    }

    fn tool_id(&self) -> String {
        format!("toolu_{}", &self.id[4..])
    }

    fn stop_reason(&self) -> &'static str {
        if self.tool.is_some() {
            "tool_use"
        } else {
            "end_turn"
        }
    }

    fn json(&self) -> String {
        let tool = match &self.tool {
            Some((name, input)) => format!(
                ",{{\"type\":\"tool_use\",\"id\":\"{}\",\"name\":{},\"input\":{input}}}",
                self.tool_id(),
                json_str(name)
            ),
            None => String::new(),
        };
        format!(
            "{{\"id\":\"{}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[{{\"type\":\"text\",\
             \"text\":{}}}{tool}],\"stop_reason\":\"{}\",\"stop_sequence\":null,\"usage\":{}}}",
            self.id,
            json_str(&self.model),
            json_str(&self.words.join(" ")),
            self.stop_reason(),
            self.usage(self.words.len())
        )
    }

    fn events(&self) -> Vec<String> {
        let ev = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n");
        let mut out = vec![
            ev(
                "message_start",
                format!(
                    "{{\"type\":\"message_start\",\"message\":{{\"id\":\"{}\",\"type\":\"message\",\"role\":\"assistant\",\
                     \"model\":{},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{}}}}}",
                    self.id,
                    json_str(&self.model),
                    self.usage(1)
                ),
            ),
            ev("ping", "{\"type\":\"ping\"}".into()),
            ev(
                "content_block_start",
                "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}".into(),
            ),
        ];
        for (j, piece) in self.words.chunks(3).enumerate() {
            let mut text = piece.join(" ");
            if (j + 1) * 3 < self.words.len() {
                text.push(' ');
            }
            out.push(ev(
                "content_block_delta",
                format!(
                    "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}",
                    json_str(&text)
                ),
            ));
        }
        out.push(ev(
            "content_block_stop",
            "{\"type\":\"content_block_stop\",\"index\":0}".into(),
        ));
        if let Some((name, input)) = &self.tool {
            out.push(ev(
                "content_block_start",
                format!(
                    "{{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{{\"type\":\"tool_use\",\
                     \"id\":\"{}\",\"name\":{},\"input\":{{}}}}}}",
                    self.tool_id(),
                    json_str(name)
                ),
            ));
            let chars: Vec<char> = input.chars().collect();
            for piece in chars.chunks(64) {
                let piece: String = piece.iter().collect();
                out.push(ev(
                    "content_block_delta",
                    format!(
                        "{{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{{\"type\":\"input_json_delta\",\
                         \"partial_json\":{}}}}}",
                        json_str(&piece)
                    ),
                ));
            }
            out.push(ev(
                "content_block_stop",
                "{\"type\":\"content_block_stop\",\"index\":1}".into(),
            ));
        }
        out.push(ev(
            "message_delta",
            format!(
                "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{}\",\"stop_sequence\":null}},\
                 \"usage\":{{\"input_tokens\":{},\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\
                 \"output_tokens\":{}}}}}",
                self.stop_reason(),
                self.input_tokens,
                self.words.len()
            ),
        ));
        out.push(ev("message_stop", "{\"type\":\"message_stop\"}".into()));
        out
    }
}

fn rate_limit_headers(request_id: &str) -> String {
    let mut h = format!("request-id: {request_id}\r\n");
    for (kind, limit) in [
        ("requests", 4000),
        ("tokens", 2_000_000),
        ("input-tokens", 1_600_000),
        ("output-tokens", 400_000),
    ] {
        h.push_str(&format!(
            "anthropic-ratelimit-{kind}-limit: {limit}\r\nanthropic-ratelimit-{kind}-remaining: {}\r\n\
             anthropic-ratelimit-{kind}-reset: 2026-01-01T00:00:00Z\r\n",
            limit - 1
        ));
    }
    h
}

struct Head {
    length: usize,
    delay_ms: u64,
    tokens: Option<usize>,
    health: bool,
}

fn parse_head(head: &str) -> Head {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut out = Head {
        length: 0,
        delay_ms: 0,
        tokens: None,
        health: request_line.contains("/health"),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            out.length = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("x-fake-scenario") {
            if let Some(ms) = value.strip_prefix("event-delay:") {
                out.delay_ms = ms.trim().parse().unwrap_or(0);
            }
        } else if name.eq_ignore_ascii_case("x-fake-text-tokens") {
            out.tokens = value.parse().ok().map(|n: usize| n.min(100_000));
        }
    }
    out
}

fn model_of(body: &[u8]) -> String {
    let key = b"\"model\":\"";
    find(body, key)
        .and_then(|i| {
            let rest = &body[i + key.len()..];
            let end = rest.iter().position(|b| *b == b'"')?;
            std::str::from_utf8(&rest[..end]).ok().map(str::to_string)
        })
        .unwrap_or_else(|| "claude-sonnet-4-6".to_string())
}

async fn serve_conn(mut stream: TcpStream, counter: Rc<Cell<u64>>, text_tokens: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Ok(()); // no head in 64 KiB: not a client of ours
            }
            let n = stream.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = parse_head(std::str::from_utf8(&buf[..head_end]).unwrap_or(""));
        while buf.len() < head_end + head.length {
            let n = stream.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let body = &buf[head_end..head_end + head.length];
        let n = counter.get();
        counter.set(n + 1);
        if head.health {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}")
                .await?;
        } else {
            let reply = Reply {
                id: format!("msg_01mock{n:016x}"),
                model: model_of(body),
                input_tokens: (head.length / 4).max(1),
                words: reply_text(head.tokens.unwrap_or(text_tokens)),
                tool: tool_call(body),
            };
            let request_id = format!("req_mock{n:016x}");
            let stream_wanted = find(body, b"\"stream\":true").is_some() || find(body, b"\"stream\": true").is_some();
            if stream_wanted {
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n\
                     {}transfer-encoding: chunked\r\n\r\n",
                    rate_limit_headers(&request_id)
                );
                stream.write_all(out.as_bytes()).await?;
                for event in reply.events() {
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    stream.write_all(chunk.as_bytes()).await?;
                    if head.delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(head.delay_ms)).await;
                    }
                }
                stream.write_all(b"0\r\n\r\n").await?;
            } else {
                let json = reply.json();
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{}content-length: {}\r\n\r\n{json}",
                    rate_limit_headers(&request_id),
                    json.len()
                );
                stream.write_all(out.as_bytes()).await?;
            }
        }
        buf.drain(..head_end + head.length);
    }
}

pub async fn serve(port: u16, text_tokens: usize) -> Result<String, String> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("nexus-loadgen upstream on http://127.0.0.1:{port}");
    let counter = Rc::new(Cell::new(0u64));
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let counter = counter.clone();
        tokio::task::spawn_local(async move {
            let _ = serve_conn(stream, counter, text_tokens).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_follow_the_api_order() {
        let reply = Reply {
            id: "msg_1".into(),
            model: "m".into(),
            input_tokens: 10,
            words: reply_text(12),
            tool: None,
        };
        let events = reply.events();
        assert_eq!(events.len(), 3 + 4 + 3);
        assert!(events[0].starts_with("event: message_start\n"));
        assert!(events.last().unwrap().starts_with("event: message_stop\n"));
        assert!(reply.json().contains("\"output_tokens\":12"));
    }

    #[test]
    fn the_fake_marker_asks_for_a_tool() {
        let body =
            br#"{"messages":[{"role":"user","content":"go [[use_tool:Agent {\"prompt\": \"say \\\"hi\\\"\"}]]"}]}"#;
        let (name, input) = tool_call(body).unwrap();
        assert_eq!(name, "Agent");
        assert_eq!(input, r#"{"prompt": "say \"hi\""}"#);
        let answered =
            br#"{"messages":[{"role":"user","content":"[[use_tool:Read {}]]"},{"role":"assistant","content":"x"}]}"#;
        assert!(tool_call(answered).is_none());
        let reply = Reply {
            id: "msg_1".into(),
            model: "m".into(),
            input_tokens: 1,
            words: reply_text(3),
            tool: Some((name, input)),
        };
        assert!(reply
            .json()
            .contains(r#""name":"Agent","input":{"prompt": "say \"hi\""}"#));
        assert!(reply.events().iter().any(|e| e.contains("input_json_delta")));
    }

    #[test]
    fn head_parsing_reads_pacing_and_length() {
        let h = parse_head("POST /v1/messages HTTP/1.1\r\nContent-Length: 42\r\nx-fake-scenario: event-delay:20\r\n");
        assert_eq!((h.length, h.delay_ms, h.health), (42, 20, false));
    }
}
