//! The HTTP client the OTLP exporter posts with: one blocking HTTP/1.1 request per export over a
//! fresh TCP connection to a plain-`http://` collector.
//!
//! Why not the exporter's own clients: its blocking client is reqwest 0.13 (a second reqwest
//! beside the tests' 0.12, plus its own runtime thread), its hyper client needs a tokio runtime
//! on the export thread. The batch span processor calls the exporter from its own OS thread
//! (through `futures_executor::block_on`), where blocking socket I/O is exactly right, and a
//! POST with `Connection: close` needs no connection pool: exports are seconds apart.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};

/// Connect, write and read timeout of one export (the OTLP default export timeout).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response read back (a collector answers an empty or tiny protobuf message).
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// A minimal blocking HTTP/1.1 client for `http://` URLs.
#[derive(Debug, Clone, Copy)]
pub struct PlainHttpClient {
    timeout: Duration,
}

impl PlainHttpClient {
    /// A client whose connect, write and read each time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// Sends `request` and reads the whole response (blocking).
    pub fn send(&self, request: &Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri();
        if uri.scheme_str() != Some("http") {
            return Err(format!("{uri}: only http:// is supported").into());
        }
        let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let mut stream = self.connect(host, port)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let body = request.body();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = uri.authority().map_or(host, |a| a.as_str());
        let mut head = Vec::with_capacity(256);
        write!(
            head,
            "{} {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {}\r\nconnection: close\r\n",
            request.method(),
            body.len()
        )?;
        for (name, value) in request.headers() {
            if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                head.extend_from_slice(name.as_str().as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(value.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
        }
        head.extend_from_slice(b"\r\n");
        stream.write_all(&head)?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES + 64 * 1024)
            .read_to_end(&mut raw)?;
        parse_response(&raw)
    }

    fn connect(&self, host: &str, port: u16) -> Result<TcpStream, HttpError> {
        // `[::1]` comes with its brackets from the URI.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut last = None;
        for addr in (host, port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => format!("cannot connect to {host}:{port}: {e}").into(),
            None => format!("{host}:{port} resolves to no address").into(),
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for PlainHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.send(&request)
    }
}

/// Parses a complete HTTP/1.1 response read until the server closed the connection: a
/// `content-length` body, a chunked body, or everything after the head.
fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(raw)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err("truncated HTTP response head".into()),
    };
    let status = parsed.code.ok_or("HTTP response without a status")?;
    let mut builder = Response::builder().status(status);
    let mut chunked = false;
    let mut length = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = std::str::from_utf8(h.value)
                .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        }
        builder = builder.header(h.name, h.value);
    }
    let rest = &raw[head_len..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("truncated HTTP response body")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(builder.body(Bytes::from(body))?)
}

/// Decodes a chunked body (RFC 9112 section 7.1; extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let line_end = find_crlf(rest).ok_or("truncated chunk size")?;
        let line = std::str::from_utf8(&rest[..line_end])?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// Serves one connection with `response` and returns what the client sent.
    fn one_shot(response: &'static [u8]) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Reads the head, then the body by its content-length.
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    while got.len() < end + 4 + len {
                        let n = s.read(&mut buf).unwrap();
                        got.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
            }
            s.write_all(response).unwrap();
            got
        });
        (url, server)
    }

    fn post(url: &str, body: &'static [u8]) -> Request<Bytes> {
        Request::builder()
            .method("POST")
            .uri(url)
            .header("content-type", "application/x-protobuf")
            .body(Bytes::from_static(body))
            .unwrap()
    }

    #[test]
    fn posts_the_body_and_reads_a_sized_response() {
        let (url, server) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        let resp = PlainHttpClient::new(TIMEOUT)
            .send(&post(&url, b"\x0a\x00payload"))
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body().as_ref(), b"abc");
        let sent = server.join().unwrap();
        let text = String::from_utf8_lossy(&sent);
        assert!(text.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-type: application/x-protobuf\r\n"));
        assert!(text.contains("\r\ncontent-length: 9\r\n"));
        assert!(sent.ends_with(b"\r\n\r\n\x0a\x00payload"));
    }

    #[test]
    fn reads_chunked_and_error_responses() {
        let (url, server) = one_shot(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nRetry-After: 2\r\n\r\n\
              4\r\nbusy\r\n3;x=y\r\n!!!\r\n0\r\n\r\n",
        );
        let resp = PlainHttpClient::new(TIMEOUT)
            .send(&post(&url, b""))
            .unwrap();
        server.join().unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.body().as_ref(), b"busy!!!");
    }

    #[test]
    fn refuses_what_it_cannot_speak() {
        let c = PlainHttpClient::new(Duration::from_millis(200));
        assert!(c.send(&post("https://127.0.0.1:1/v1/traces", b"")).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
