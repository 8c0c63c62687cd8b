//! The CGI codec (RFC 3875, as WAGI uses it): the pure, I/O-free half of
//! serving HTTP through a guest that speaks CGI on its stdio.
//!
//! This module owns two translations and nothing else:
//!
//! - request → environment: [`RequestMeta`] describes one HTTP request and
//!   [`meta_variables`] turns it into the RFC 3875 §4.1 meta-variables
//!   (`REQUEST_METHOD`, `PATH_INFO`, `HTTP_*`, …) that the guest receives as
//!   environment variables; [`split_path`] derives `SCRIPT_NAME` and
//!   `PATH_INFO` from the matched route.
//! - stdout → response head: [`CgiHeadParser`] is fed the guest's stdout chunk
//!   by chunk and yields a [`ParsedHead`] (status, headers, first body bytes)
//!   once the blank line ending the CGI response head (RFC 3875 §6) is seen.
//!
//! Running the guest, routing, and streaming the body are the caller's job.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The value of the `SERVER_SOFTWARE` meta-variable (`name/version`).
pub const SERVER_SOFTWARE: &str = concat!("wasm-run/", env!("CARGO_PKG_VERSION"));

/// The largest CGI response head accepted, in bytes, blank line included.
pub const MAX_CGI_HEAD_BYTES: usize = 64 * 1024;

/// Longest excerpt of guest output quoted in an error message, in characters.
const EXCERPT_CHARS: usize = 80;

/// What the server knows about one HTTP request, as plain data; the input of
/// [`meta_variables`].
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The request method (`REQUEST_METHOD`).
    pub method: Method,
    /// The part of the path that selected the guest (`SCRIPT_NAME`): no
    /// trailing slash, `""` for the root. See [`split_path`].
    pub script_name: String,
    /// The rest of the path after [`script_name`](Self::script_name)
    /// (`PATH_INFO`): empty or starting with `/`, as received (not
    /// percent-decoded).
    pub path_info: String,
    /// The query string without the `?` (`QUERY_STRING`), possibly empty.
    pub query_string: String,
    /// The server's host name or address (`SERVER_NAME`).
    pub server_name: String,
    /// The port the request arrived on (`SERVER_PORT`).
    pub server_port: u16,
    /// The request's protocol, e.g. `HTTP/1.1` (`SERVER_PROTOCOL`).
    pub server_protocol: String,
    /// The client's address (`REMOTE_ADDR`).
    pub remote_addr: IpAddr,
    /// The client's port (`REMOTE_PORT`).
    pub remote_port: u16,
    /// The request body's media type (`CONTENT_TYPE`), if it has one.
    pub content_type: Option<String>,
    /// The request body's length (`CONTENT_LENGTH`), if known.
    pub content_length: Option<u64>,
    /// The request headers, each passed on as an `HTTP_*` variable.
    pub headers: HeaderMap,
}

/// Builds the RFC 3875 meta-variables for a request, in a stable order.
///
/// Always present: `GATEWAY_INTERFACE` (`CGI/1.1`), `SERVER_SOFTWARE`,
/// `REQUEST_METHOD`, `SCRIPT_NAME`, `PATH_INFO`, `QUERY_STRING` (possibly
/// empty), `SERVER_NAME`, `SERVER_PORT`, `SERVER_PROTOCOL`, `REMOTE_ADDR` and
/// `REMOTE_PORT`. `CONTENT_TYPE` and `CONTENT_LENGTH` appear only when known.
///
/// Then one `HTTP_<NAME>` per request header (name upper-cased, `-` → `_`),
/// repeated headers joined with `", "` (`Cookie` with `"; "`, RFC 9113
/// §8.2.3). Left out: `Content-Type` and `Content-Length` (they have their own
/// variables), `Proxy` (it would become `HTTP_PROXY`, which many HTTP clients
/// read as their proxy setting: "httpoxy"), names with characters other than
/// `[A-Za-z0-9-]`, and any header with a value that is not UTF-8.
#[must_use]
pub fn meta_variables(meta: &RequestMeta) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        ("GATEWAY_INTERFACE", "CGI/1.1".to_owned()),
        ("SERVER_SOFTWARE", SERVER_SOFTWARE.to_owned()),
        ("REQUEST_METHOD", meta.method.as_str().to_owned()),
        ("SCRIPT_NAME", meta.script_name.clone()),
        ("PATH_INFO", meta.path_info.clone()),
        ("QUERY_STRING", meta.query_string.clone()),
        ("SERVER_NAME", meta.server_name.clone()),
        ("SERVER_PORT", meta.server_port.to_string()),
        ("SERVER_PROTOCOL", meta.server_protocol.clone()),
        // An IPv4 client on a dual-stack socket shows as itself, not ::ffff:a.b.c.d.
        ("REMOTE_ADDR", meta.remote_addr.to_canonical().to_string()),
        ("REMOTE_PORT", meta.remote_port.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    if let Some(content_type) = &meta.content_type {
        vars.push(("CONTENT_TYPE".to_owned(), content_type.clone()));
    }
    if let Some(length) = meta.content_length {
        vars.push(("CONTENT_LENGTH".to_owned(), length.to_string()));
    }
    for name in meta.headers.keys() {
        if let Some(var) = header_variable(name, &meta.headers) {
            vars.push(var);
        }
    }
    vars
}

/// The `HTTP_*` variable for one header name, or `None` if it is left out.
fn header_variable(name: &HeaderName, headers: &HeaderMap) -> Option<(String, String)> {
    let text = name.as_str();
    let valid_name = text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid_name || *name == CONTENT_TYPE || *name == CONTENT_LENGTH || text == "proxy" {
        return None;
    }
    let values = headers
        .get_all(name)
        .iter()
        .map(|value| std::str::from_utf8(value.as_bytes()).ok())
        .collect::<Option<Vec<&str>>>()?;
    let separator = if *name == COOKIE { "; " } else { ", " };
    let var = format!("HTTP_{}", text.to_ascii_uppercase().replace('-', "_"));
    Some((var, values.join(separator)))
}

/// Splits a request path into `(SCRIPT_NAME, PATH_INFO)` for the route prefix
/// that matched it.
///
/// `SCRIPT_NAME` is the prefix without trailing slashes (`""` for `/`) and
/// `PATH_INFO` is the rest of the path, empty or starting with `/`: prefix
/// `/app/` splits `/app/a/b` into `("/app", "/a/b")` and `/app` into
/// `("/app", "")`. A path not under the prefix (a caller's mistake; `/apple`
/// is not under `/app`) gives `("", path)`, so that the two always
/// concatenate back to the path.
#[must_use]
pub fn split_path(route_prefix: &str, path: &str) -> (String, String) {
    let script_name = route_prefix.trim_end_matches('/');
    match path.strip_prefix(script_name) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            (script_name.to_owned(), rest.to_owned())
        }
        _ => (String::new(), path.to_owned()),
    }
}

/// Why a guest's stdout is not a valid CGI response (or the parser was
/// misused). The messages are meant for the guest's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgiError {
    /// Stdout ended before any byte was written.
    #[error(
        "empty output: the guest printed nothing (a CGI guest must print headers, \
         a blank line, then the body)"
    )]
    Empty,
    /// Stdout ended before the blank line that ends the head.
    #[error(
        "the CGI response head was never terminated by a blank line \
         (stdout ended after {len} bytes)"
    )]
    Unterminated {
        /// How many bytes the guest wrote in all.
        len: usize,
    },
    /// No blank line within the first [`MAX_CGI_HEAD_BYTES`] bytes.
    #[error("CGI response head exceeds {MAX_CGI_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// A head line without a `:`.
    #[error("header line {line} has no colon: {text:?}")]
    NoColon {
        /// The 1-based line number within the head.
        line: usize,
        /// The line (lossily decoded, shortened to 80 characters).
        text: String,
    },
    /// A header name that is not an HTTP token (RFC 9110 §5.1).
    #[error("header line {line} has an invalid header name {name:?}")]
    InvalidName {
        /// The 1-based line number within the head.
        line: usize,
        /// The name (lossily decoded, shortened to 80 characters).
        name: String,
    },
    /// A header value with a control character other than tab.
    #[error("header line {line} has an invalid value for `{name}`: {value:?}")]
    InvalidValue {
        /// The 1-based line number within the head.
        line: usize,
        /// The header name.
        name: String,
        /// The value (lossily decoded, shortened to 80 characters).
        value: String,
    },
    /// A `Status` that is not a 3-digit code from 100 to 999, optionally
    /// followed by a space and a reason phrase.
    #[error(
        "invalid Status `{value}` (expected a 3-digit code from 100 to 999, \
         optionally followed by a reason phrase, e.g. `404 Not Found`)"
    )]
    InvalidStatus {
        /// The Status value (lossily decoded, shortened to 80 characters).
        value: String,
    },
    /// More than one `Status` header.
    #[error("more than one Status header in the CGI response head")]
    DuplicateStatus,
    /// None of the headers RFC 3875 §6.2 requires.
    #[error("no Content-Type, Location or Status header in the CGI response head")]
    MissingHeaders,
    /// [`CgiHeadParser`] used after it returned a head or an error.
    #[error("the CGI head parser was used after it had returned a head or an error")]
    Spent,
}

/// A parsed CGI response head.
#[derive(Debug, Clone)]
pub struct ParsedHead {
    /// From `Status`, else 302 if there is a `Location`, else 200.
    pub status: StatusCode,
    /// The response headers, in order, repeats kept; without `Status`.
    pub headers: HeaderMap,
    /// The bytes after the blank line that were already read: the start of
    /// the body. The rest of stdout follows it.
    pub body_start: Bytes,
}

/// An incremental parser for the head of a CGI response (RFC 3875 §6).
///
/// Feed it the guest's stdout with [`push`](Self::push) until it returns a
/// [`ParsedHead`]; the remaining stdout is body. Lines may end in `\n` or
/// `\r\n`; the head ends at the first empty line. If stdout ends first, call
/// [`finish`](Self::finish) for the error that explains why. After returning a
/// head or an error the parser is spent: further calls return
/// [`CgiError::Spent`].
#[derive(Debug, Default)]
pub struct CgiHeadParser {
    /// Everything pushed so far (at most about `MAX_CGI_HEAD_BYTES` + one chunk).
    buf: Vec<u8>,
    /// Where the line being read starts in `buf`.
    line_start: usize,
    /// Set once a head or an error has been returned.
    spent: bool,
}

impl CgiHeadParser {
    /// A parser that has seen nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of stdout. Returns `Ok(None)` while the head is
    /// incomplete, `Ok(Some(head))` once the blank line has been seen, or an
    /// error if the head is invalid or longer than [`MAX_CGI_HEAD_BYTES`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<ParsedHead>, CgiError> {
        if self.spent {
            return Err(CgiError::Spent);
        }
        let mut pos = self.buf.len();
        self.buf.extend_from_slice(chunk);
        while let Some(offset) = self.buf[pos..].iter().position(|&b| b == b'\n') {
            let newline = pos + offset;
            let line = &self.buf[self.line_start..newline];
            if line.is_empty() || line == b"\r" {
                self.spent = true;
                let head_end = newline + 1;
                if head_end > MAX_CGI_HEAD_BYTES {
                    return Err(CgiError::HeadTooLarge);
                }
                let mut head = parse_head(&self.buf[..self.line_start])?;
                head.body_start = Bytes::from(std::mem::take(&mut self.buf)).slice(head_end..);
                return Ok(Some(head));
            }
            self.line_start = newline + 1;
            pos = newline + 1;
        }
        if self.buf.len() > MAX_CGI_HEAD_BYTES {
            self.spent = true;
            return Err(CgiError::HeadTooLarge);
        }
        Ok(None)
    }

    /// Call when stdout has ended before [`push`](Self::push) returned a
    /// head. A head must end with a blank line, so this returns the error
    /// that says what was missing: [`CgiError::Empty`] if nothing was
    /// written, else [`CgiError::Unterminated`].
    pub fn finish(self) -> Result<ParsedHead, CgiError> {
        if self.spent {
            Err(CgiError::Spent)
        } else if self.buf.is_empty() {
            Err(CgiError::Empty)
        } else {
            Err(CgiError::Unterminated {
                len: self.buf.len(),
            })
        }
    }
}

/// Parses the head's header lines: `head` is everything before the blank
/// line, each line ending in `\n` or `\r\n`.
fn parse_head(head: &[u8]) -> Result<ParsedHead, CgiError> {
    let mut status = None;
    let mut headers = HeaderMap::new();
    let lines = head.strip_suffix(b"\n").map(|h| h.split(|&b| b == b'\n'));
    for (index, line) in lines.into_iter().flatten().enumerate() {
        let line_no = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':');
        let colon = colon.ok_or_else(|| CgiError::NoColon {
            line: line_no,
            text: excerpt(line),
        })?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        let name = HeaderName::from_bytes(name).map_err(|_| CgiError::InvalidName {
            line: line_no,
            name: excerpt(name),
        })?;
        if name.as_str() == "status" {
            if status.is_some() {
                return Err(CgiError::DuplicateStatus);
            }
            status = Some(parse_status(value)?);
            continue;
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| CgiError::InvalidValue {
            line: line_no,
            name: name.as_str().to_owned(),
            value: excerpt(value),
        })?;
        headers.append(name, value);
    }
    let has_location = headers.contains_key(http::header::LOCATION);
    if status.is_none() && !has_location && !headers.contains_key(CONTENT_TYPE) {
        return Err(CgiError::MissingHeaders);
    }
    let status = status.unwrap_or(if has_location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(ParsedHead {
        status,
        headers,
        body_start: Bytes::new(),
    })
}

/// Parses a `Status` value: `NNN` or `NNN reason phrase`.
fn parse_status(value: &[u8]) -> Result<StatusCode, CgiError> {
    let invalid = || CgiError::InvalidStatus {
        value: excerpt(value),
    };
    let (code, rest) = value.split_at_checked(3).ok_or_else(invalid)?;
    if !matches!(rest.first(), None | Some(b' ' | b'\t')) {
        return Err(invalid());
    }
    // `from_bytes` takes exactly three digits, the first 1-9: 100..=999.
    StatusCode::from_bytes(code).map_err(|_| invalid())
}

/// Strips optional whitespace (spaces and tabs) from both ends.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Guest output for an error message: lossily decoded, at most
/// [`EXCERPT_CHARS`] characters, `…` marking a cut.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn meta() -> RequestMeta {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com:8080"));
        headers.append("accept", HeaderValue::from_static("text/html"));
        headers.append("accept", HeaderValue::from_static("application/json"));
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("13"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        RequestMeta {
            method: Method::POST,
            script_name: "/app".to_owned(),
            path_info: "/items/7".to_owned(),
            query_string: "a=1&b=two".to_owned(),
            server_name: "example.com".to_owned(),
            server_port: 8080,
            server_protocol: "HTTP/1.1".to_owned(),
            remote_addr: "192.0.2.7".parse().unwrap(),
            remote_port: 51234,
            content_type: Some("application/json".to_owned()),
            content_length: Some(13),
            headers,
        }
    }

    fn var<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        let mut found = vars.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} appears twice");
        first
    }

    #[test]
    fn meta_variables_for_a_typical_request() {
        let vars = meta_variables(&meta());
        let expect = [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_SOFTWARE", SERVER_SOFTWARE),
            ("REQUEST_METHOD", "POST"),
            ("SCRIPT_NAME", "/app"),
            ("PATH_INFO", "/items/7"),
            ("QUERY_STRING", "a=1&b=two"),
            ("SERVER_NAME", "example.com"),
            ("SERVER_PORT", "8080"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "192.0.2.7"),
            ("REMOTE_PORT", "51234"),
            ("CONTENT_TYPE", "application/json"),
            ("CONTENT_LENGTH", "13"),
            ("HTTP_HOST", "example.com:8080"),
            ("HTTP_ACCEPT", "text/html, application/json"),
            ("HTTP_X_REQUEST_ID", "abc-123"),
            ("HTTP_AUTHORIZATION", "Bearer t"),
        ];
        for (name, value) in expect {
            assert_eq!(var(&vars, name), Some(value), "{name}");
        }
        assert_eq!(vars.len(), expect.len(), "{vars:?}");
        assert_eq!(var(&vars, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(var(&vars, "HTTP_CONTENT_LENGTH"), None);
        assert!(SERVER_SOFTWARE.starts_with("wasm-run/"));
    }

    #[test]
    fn meta_variables_optional_parts() {
        let mut m = meta();
        m.method = Method::GET;
        m.query_string.clear();
        m.content_type = None;
        m.content_length = None;
        m.headers.clear();
        m.remote_addr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let vars = meta_variables(&m);
        assert_eq!(var(&vars, "QUERY_STRING"), Some(""));
        assert_eq!(var(&vars, "REQUEST_METHOD"), Some("GET"));
        assert_eq!(var(&vars, "REMOTE_ADDR"), Some("::1"));
        assert_eq!(var(&vars, "CONTENT_TYPE"), None);
        assert_eq!(var(&vars, "CONTENT_LENGTH"), None);
        assert_eq!(vars.len(), 11);
        m.remote_addr = "::ffff:198.51.100.1".parse().unwrap();
        assert_eq!(
            var(&meta_variables(&m), "REMOTE_ADDR"),
            Some("198.51.100.1")
        );
    }

    #[test]
    fn meta_variables_skip_unusable_headers() {
        let mut m = meta();
        m.headers.clear();
        m.headers.insert("x_under", HeaderValue::from_static("1"));
        m.headers.insert("x.dot", HeaderValue::from_static("1"));
        m.headers
            .insert("proxy", HeaderValue::from_static("http://evil:1"));
        m.headers
            .insert("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        m.headers.insert(
            "x-utf8",
            HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        );
        m.headers.append("cookie", HeaderValue::from_static("a=1"));
        m.headers.append("cookie", HeaderValue::from_static("b=2"));
        let vars = meta_variables(&m);
        let http: Vec<_> = vars
            .iter()
            .filter(|(n, _)| n.starts_with("HTTP_"))
            .collect();
        assert_eq!(
            http,
            [
                &("HTTP_X_UTF8".to_owned(), "café".to_owned()),
                &("HTTP_COOKIE".to_owned(), "a=1; b=2".to_owned()),
            ]
        );
    }

    #[test]
    fn split_path_cases() {
        let split = |prefix, path| {
            let (s, p) = split_path(prefix, path);
            (s.clone(), p.clone(), format!("{s}{p}"))
        };
        let cases = [
            ("/", "/", "", "/"),
            ("/", "/a/b", "", "/a/b"),
            ("", "/a", "", "/a"),
            ("/app", "/app", "/app", ""),
            ("/app", "/app/", "/app", "/"),
            ("/app/", "/app/x/y", "/app", "/x/y"),
            ("/app/", "/app", "/app", ""),
            ("/a/b", "/a/b/c", "/a/b", "/c"),
            ("/app", "/apple", "", "/apple"),
            ("/app", "/other", "", "/other"),
        ];
        for (prefix, path, script_name, path_info) in cases {
            let (s, p, joined) = split(prefix, path);
            assert_eq!(
                (s.as_str(), p.as_str()),
                (script_name, path_info),
                "{prefix} {path}"
            );
            assert_eq!(joined, path);
        }
    }

    /// Pushes `chunks` in order; the head must appear with the last one.
    fn parse_chunks(chunks: &[&[u8]]) -> Result<ParsedHead, CgiError> {
        let mut parser = CgiHeadParser::new();
        let (last, init) = chunks.split_last().unwrap();
        for chunk in init {
            assert!(parser.push(chunk)?.is_none(), "head finished early");
        }
        match parser.push(last)? {
            Some(head) => Ok(head),
            None => parser.finish(),
        }
    }

    fn parse(out: &[u8]) -> Result<ParsedHead, CgiError> {
        parse_chunks(&[out])
    }

    #[test]
    fn one_chunk_crlf() {
        let head = parse(b"Content-Type: text/plain\r\nX-A: 1\r\n\r\nhello").unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["content-type"], "text/plain");
        assert_eq!(head.headers["x-a"], "1");
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.body_start, Bytes::from_static(b"hello"));
    }

    #[test]
    fn one_chunk_lf_and_mixed_endings() {
        let head = parse(b"content-type:text/html\n\n<p>hi</p>\n\nmore").unwrap();
        assert_eq!(head.headers[CONTENT_TYPE], "text/html");
        assert_eq!(head.body_start, Bytes::from_static(b"<p>hi</p>\n\nmore"));
        let head = parse(b"Content-Type: a/b\r\nX: 1\n\r\nbody").unwrap();
        assert_eq!(head.headers["x"], "1");
        assert_eq!(head.body_start, Bytes::from_static(b"body"));
    }

    #[test]
    fn byte_by_byte_matches_one_chunk() {
        let out: &[u8] = b"Status: 201 Created\r\nContent-Type: a/b\r\nSet-Cookie: a=1\r\n\
                           Set-Cookie: b=2\r\n\r\nbody bytes";
        let head_len = out.len() - b"body bytes".len();
        let mut parser = CgiHeadParser::new();
        for (i, byte) in out[..head_len].iter().enumerate() {
            let got = parser.push(std::slice::from_ref(byte)).unwrap();
            assert_eq!(got.is_some(), i == head_len - 1, "byte {i}");
            if let Some(head) = got {
                assert_eq!(head.status, StatusCode::CREATED);
                let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
                assert_eq!(cookies, ["a=1", "b=2"]);
                assert!(head.body_start.is_empty());
                assert_eq!(head.headers, parse(out).unwrap().headers);
            }
        }
        assert_eq!(parser.push(b"x").unwrap_err(), CgiError::Spent);
        assert_eq!(parser.finish().unwrap_err(), CgiError::Spent);
    }

    #[test]
    fn chunks_split_inside_the_terminator() {
        let head = parse_chunks(&[b"Content-Type: a/b\r", b"\n\r", b"\nbo"]).unwrap();
        assert_eq!(head.body_start, Bytes::from_static(b"bo"));
        let head = parse_chunks(&[b"Content-Type: a/b\n", b"\nrest"]).unwrap();
        assert_eq!(head.body_start, Bytes::from_static(b"rest"));
    }

    #[test]
    fn status_with_and_without_reason() {
        let head = parse(b"Status: 404 Not Found\n\n").unwrap();
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert!(head.headers.is_empty(), "Status is not an HTTP header");
        assert_eq!(
            parse(b"status:204\n\n").unwrap().status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(parse(b"STATUS: 599 \n\n").unwrap().status.as_u16(), 599);
        assert_eq!(
            parse(b"Status: 999\tWhatever\n\n").unwrap().status.as_u16(),
            999
        );
        let head = parse(b"Status: 301\nLocation: /new\n\n").unwrap();
        assert_eq!(head.status, StatusCode::MOVED_PERMANENTLY);
    }

    #[test]
    fn invalid_status() {
        for bad in [
            "abc", "20", "2000", "099", "1000 x", "20a", "200OK", "", "-20",
        ] {
            let out = format!("Status: {bad}\nContent-Type: a/b\n\n");
            assert_eq!(
                parse(out.as_bytes()).unwrap_err(),
                CgiError::InvalidStatus {
                    value: bad.to_owned()
                },
                "{bad}"
            );
        }
        let err = parse(b"Status: abc\n\n").unwrap_err();
        assert!(err.to_string().starts_with("invalid Status `abc`"), "{err}");
        let err = parse(b"Status: 200\nStatus: 404\n\n").unwrap_err();
        assert_eq!(err, CgiError::DuplicateStatus);
    }

    #[test]
    fn location_means_302() {
        let head = parse(b"Location: https://example.com/x\r\n\r\n").unwrap();
        assert_eq!(head.status, StatusCode::FOUND);
        assert_eq!(head.headers["location"], "https://example.com/x");
        assert_eq!(
            parse(b"location: /local\n\n").unwrap().status,
            StatusCode::FOUND
        );
    }

    #[test]
    fn missing_required_header() {
        let err = parse(b"X-Only: 1\n\nbody").unwrap_err();
        assert_eq!(err, CgiError::MissingHeaders);
        assert_eq!(
            err.to_string(),
            "no Content-Type, Location or Status header in the CGI response head"
        );
        assert_eq!(parse(b"\nbody").unwrap_err(), CgiError::MissingHeaders);
    }

    #[test]
    fn unterminated_head() {
        let mut parser = CgiHeadParser::new();
        assert!(
            parser
                .push(b"Content-Type: text/plain\n")
                .unwrap()
                .is_none()
        );
        assert!(parser.push(b"hello").unwrap().is_none());
        let err = parser.finish().unwrap_err();
        assert_eq!(err, CgiError::Unterminated { len: 30 });
        assert_eq!(
            err.to_string(),
            "the CGI response head was never terminated by a blank line \
             (stdout ended after 30 bytes)"
        );
    }

    #[test]
    fn empty_output() {
        let err = CgiHeadParser::new().finish().unwrap_err();
        assert_eq!(err, CgiError::Empty);
        assert!(
            err.to_string()
                .starts_with("empty output: the guest printed nothing")
        );
        let mut parser = CgiHeadParser::new();
        assert!(parser.push(b"").unwrap().is_none());
        assert_eq!(parser.finish().unwrap_err(), CgiError::Empty);
    }

    #[test]
    fn oversize_head() {
        let big = format!(
            "Content-Type: a/b\nX-Big: {}\n",
            "x".repeat(MAX_CGI_HEAD_BYTES)
        );
        let err = parse(big.as_bytes()).unwrap_err();
        assert_eq!(err, CgiError::HeadTooLarge);
        assert_eq!(err.to_string(), "CGI response head exceeds 65536 bytes");

        // A head of exactly the cap is fine, one byte more is not; also when
        // the terminator arrives in the same chunk as the excess.
        let exact = |extra: usize| {
            let prefix = "Content-Type: a/b\nX: ";
            let fill = MAX_CGI_HEAD_BYTES + extra - prefix.len() - 2;
            format!("{prefix}{}\n\nbody", "y".repeat(fill))
        };
        let ok = parse(exact(0).as_bytes()).unwrap();
        assert_eq!(ok.body_start, Bytes::from_static(b"body"));
        assert_eq!(
            parse(exact(1).as_bytes()).unwrap_err(),
            CgiError::HeadTooLarge
        );

        let mut parser = CgiHeadParser::new();
        let chunk = vec![b'z'; 4096];
        let err = loop {
            match parser.push(&chunk) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("no head expected"),
                Err(err) => break err,
            }
        };
        assert_eq!(err, CgiError::HeadTooLarge);
        assert!(parser.buf.len() <= MAX_CGI_HEAD_BYTES + chunk.len());
    }

    #[test]
    fn malformed_lines() {
        let err = parse(b"Content-Type: a/b\nthis line has no colon\n\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"header line 2 has no colon: "this line has no colon""#
        );

        let long = format!("Content-Type: a/b\r\n{}\r\n\r\n", "w".repeat(200));
        let CgiError::NoColon { line: 2, text } = parse(long.as_bytes()).unwrap_err() else {
            panic!("expected NoColon")
        };
        assert_eq!(text, format!("{}…", "w".repeat(80)));

        let err = parse(b"Bad Name: 1\nContent-Type: a/b\n\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"header line 1 has an invalid header name "Bad Name""#
        );
        let err = parse(b": 1\nContent-Type: a/b\n\n").unwrap_err();
        assert_eq!(
            err,
            CgiError::InvalidName {
                line: 1,
                name: String::new()
            }
        );
        let err = parse(b"Content-Type: a/b\nX-Ctl: a\x01b\n\n").unwrap_err();
        assert_eq!(
            err,
            CgiError::InvalidValue {
                line: 2,
                name: "x-ctl".into(),
                value: "a\u{1}b".into()
            }
        );
        // A lone CR inside a line is a control character in the value.
        let err = parse(b"Content-Type: a/b\r\rX: 1\n\n").unwrap_err();
        assert!(
            matches!(err, CgiError::InvalidValue { line: 1, .. }),
            "{err:?}"
        );
        // Obsolete line folding is not CGI: the continuation has a bad name.
        let err = parse(b"Content-Type: a/b\n continued: x\n\n").unwrap_err();
        assert!(
            matches!(err, CgiError::InvalidName { line: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn non_utf8_header_values_are_kept() {
        let head = parse(b"Content-Type: text/plain\nX-Latin1: caf\xe9\nX-Empty:\n\n").unwrap();
        assert_eq!(head.headers["x-latin1"].as_bytes(), b"caf\xe9");
        assert_eq!(head.headers["x-empty"], "");
    }

    #[test]
    fn values_are_trimmed_and_may_contain_colons() {
        let head = parse(b"Content-Type: a/b\nX-Url: \t http://h:1/p \t\n\n").unwrap();
        assert_eq!(head.headers["x-url"], "http://h:1/p");
    }

    #[test]
    fn body_start_carries_everything_after_the_head() {
        let mut parser = CgiHeadParser::new();
        assert!(parser.push(b"Content-Type: app").unwrap().is_none());
        let head = parser
            .push(b"lication/octet-stream\n\n\x00\x01\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.headers[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(head.body_start, Bytes::from_static(b"\x00\x01\r\n\r\n"));
    }

    #[test]
    fn error_after_error_is_spent() {
        let mut parser = CgiHeadParser::new();
        assert_eq!(parser.push(b"nope\n\n").unwrap_err().to_string(), {
            r#"header line 1 has no colon: "nope""#
        });
        assert_eq!(
            parser.push(b"Content-Type: a/b\n\n").unwrap_err(),
            CgiError::Spent
        );
    }
}
