//! Property tests (proptest) of the host's parsers: sizes and durations
//! (`limits`), the CGI codec (`serve::cgi`) and the server configuration
//! (`serve::config`).
//!
//! Each property is checked against an independent model of what the input
//! should mean (built by the generator, not by the code under test), so a
//! property fails when the parser disagrees with its documentation. Every
//! block runs proptest's default 256 cases; the whole file takes seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use wasm_run::Limits;
use wasm_run::limits::{ByteSize, MAX_DURATION, parse_duration, parse_size};
use wasm_run::serve::cgi::{
    CgiError, CgiHeadParser, MAX_CGI_HEAD_BYTES, ParsedHead, RequestMeta, meta_variables,
    split_path,
};
use wasm_run::serve::config::{
    ConfigFile, ModuleSource, default_limits, normalise_prefix, resolve_routes,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Every unit `parse_size` documents, with its multiplier.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", KIB),
    ("kb", KIB),
    ("kib", KIB),
    ("m", MIB),
    ("mb", MIB),
    ("mib", MIB),
    ("g", GIB),
    ("gb", GIB),
    ("gib", GIB),
];

/// Every unit `parse_duration` documents, in nanoseconds.
const DURATION_UNITS: &[(&str, u128)] = &[
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("min", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Upper-cases the characters of `s` whose bit is set in `mask`.
fn mixed_case(s: &str, mask: u32) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask & (1 << (i % 32)) != 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Optional whitespace (spaces and tabs).
fn ows() -> impl Strategy<Value = String> {
    "[ \t]{0,3}"
}

/// Byte counts, biased towards exact multiples of each binary unit so that
/// every `Display` branch is taken.
fn byte_counts() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..=4 * MIB,
        (0..=u64::MAX >> 10).prop_map(|k| k << 10),
        (0..=u64::MAX >> 20).prop_map(|k| k << 20),
        (0..=u64::MAX >> 30).prop_map(|k| k << 30),
        (0..=4096u64).prop_map(|k| k << 30),
    ]
}

/// A valid size spelling and the number of bytes it means.
fn valid_size() -> impl Strategy<Value = (String, u64)> {
    (0..SIZE_UNITS.len())
        .prop_flat_map(|i| {
            let (unit, mult) = SIZE_UNITS[i];
            (
                Just(unit),
                Just(mult),
                0..=u64::MAX / mult,
                0..3usize,
                any::<u32>(),
                (ows(), ows(), ows()),
            )
        })
        .prop_map(|(unit, mult, n, zeros, mask, (lead, mid, trail))| {
            let text = format!(
                "{lead}{}{n}{mid}{}{trail}",
                "0".repeat(zeros),
                mixed_case(unit, mask)
            );
            (text, n * mult)
        })
}

/// A size spelling whose value does not fit in a `u64`.
fn oversized_size() -> impl Strategy<Value = String> {
    prop_oneof![
        (2..SIZE_UNITS.len()).prop_flat_map(|i| {
            let (unit, mult) = SIZE_UNITS[i];
            (u64::MAX / mult + 1..=u64::MAX).prop_map(move |n| format!("{n}{unit}"))
        }),
        // More digits than any u64 has.
        "[1-9][0-9]{20,30}(|b|KiB|g)",
    ]
}

/// A valid duration spelling and the exact duration it denotes, in
/// nanoseconds (at most `MAX_DURATION`).
fn valid_duration() -> impl Strategy<Value = (String, u128)> {
    (0..DURATION_UNITS.len())
        .prop_flat_map(|i| {
            let (unit, ns) = DURATION_UNITS[i];
            let max_whole = MAX_DURATION.as_nanos() / ns;
            (
                Just(unit),
                Just(ns),
                prop_oneof![0..=max_whole.min(1000), 0..=max_whole],
                // Fraction digits: none, or 1 to 3 of them.
                prop_oneof![Just(None), (1..=3u32, 0..1000u128).prop_map(Some)],
                (ows(), ows(), ows()),
            )
        })
        .prop_filter_map(
            "over MAX_DURATION",
            |(unit, ns, whole, fraction, (lead, mid, trail))| {
                let (digits, nanos) = match fraction {
                    None => (String::new(), whole * ns),
                    Some((places, f)) => {
                        let f = f % 10u128.pow(places);
                        let scale = 10u128.pow(places);
                        (
                            format!(".{f:0width$}", width = places as usize),
                            whole * ns + f * ns / scale,
                        )
                    }
                };
                (nanos <= MAX_DURATION.as_nanos())
                    .then(|| (format!("{lead}{whole}{digits}{mid}{unit}{trail}"), nanos))
            },
        )
}

/// A duration spelling longer than `MAX_DURATION` by at least a microsecond.
fn too_long_duration() -> impl Strategy<Value = String> {
    let max_secs = MAX_DURATION.as_secs();
    prop_oneof![
        (0..DURATION_UNITS.len()).prop_flat_map(|i| {
            let (unit, ns) = DURATION_UNITS[i];
            let first_over = MAX_DURATION.as_nanos() / ns + 1;
            prop_oneof![
                first_over..=first_over + 10,
                first_over..=first_over.saturating_mul(1000),
            ]
            .prop_map(move |n| format!("{n}{unit}"))
        }),
        (1..1_000_000u64).prop_map(move |us| format!("{max_secs}.{us:06}s")),
        "[1-9][0-9]{30,60}(us|ms|s|m|h)",
    ]
}

proptest! {
    /// `parse_size` never panics, and whatever it accepts survives a trip
    /// through `ByteSize`'s `Display` and is indifferent to surrounding
    /// whitespace.
    #[test]
    fn parse_size_never_panics(
        s in prop_oneof![any::<String>(), "[0-9 .+-]{0,24}[a-zA-Zµ .]{0,5}"],
    ) {
        let parsed = parse_size(&s);
        if let Ok(n) = parsed {
            prop_assert_eq!(parse_size(&ByteSize(n).to_string()), Ok(n));
        }
        prop_assert_eq!(
            parse_size(&format!(" \t{s}  ")).ok(),
            parsed.ok(),
            "surrounding whitespace changed the meaning of {:?}", s
        );
    }

    /// `ByteSize` `Display` → parse gives the same value, in the largest
    /// unit that divides it, never longer than the plain byte count.
    #[test]
    fn byte_size_display_round_trips(n in byte_counts()) {
        let text = ByteSize(n).to_string();
        prop_assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(n)), "{}", text);
        prop_assert_eq!(parse_size(&text), Ok(n));
        let unit = if n > 0 && n % GIB == 0 {
            "GiB"
        } else if n > 0 && n % MIB == 0 {
            "MiB"
        } else if n > 0 && n % KIB == 0 {
            "KiB"
        } else {
            ""
        };
        let digits = text.strip_suffix(unit).expect("unit suffix");
        prop_assert!(
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
            "{} for {}", text, n
        );
        prop_assert!(digits == "0" || !digits.starts_with('0'), "{}", text);
        prop_assert!(text.len() <= n.to_string().len(), "{} for {}", text, n);
    }

    /// Every documented spelling (units in any case, leading zeros,
    /// whitespace around the number and unit) is accepted with its value.
    #[test]
    fn parse_size_accepts_every_valid_spelling((text, bytes) in valid_size()) {
        prop_assert_eq!(parse_size(&text), Ok(bytes), "{:?}", text);
    }

    /// Sizes that do not fit in 64 bits are rejected, not wrapped.
    #[test]
    fn parse_size_rejects_overflow(text in oversized_size()) {
        let err = parse_size(&text).expect_err("overflowing size accepted");
        prop_assert!(err.to_string().contains(&text), "{}", err);
    }

    /// `parse_duration` never panics and never returns more than
    /// `MAX_DURATION`, whatever it is given.
    #[test]
    fn parse_duration_never_panics_and_is_capped(
        s in prop_oneof![any::<String>(), "[0-9.eE+ -]{0,40}[a-zµ ]{0,4}"],
    ) {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d <= MAX_DURATION, "{:?} gave {:?}", s, d);
        }
    }

    /// Every documented spelling up to `MAX_DURATION` is accepted, with its
    /// value (to within a microsecond: it goes through an `f64`).
    #[test]
    fn parse_duration_accepts_every_valid_spelling((text, nanos) in valid_duration()) {
        let d = parse_duration(&text)
            .unwrap_or_else(|e| panic!("valid duration {text:?} rejected: {e}"));
        prop_assert!(
            d.as_nanos().abs_diff(nanos) <= 1_000,
            "{:?} parsed as {:?}, expected {}ns", text, d, nanos
        );
        prop_assert!(d <= MAX_DURATION);
    }

    /// Anything longer than `MAX_DURATION` is rejected, in every unit.
    #[test]
    fn parse_duration_rejects_anything_over_the_maximum(text in too_long_duration()) {
        let result = parse_duration(&text);
        prop_assert!(result.is_err(), "{:?} accepted as {:?}", text, result);
    }
}

// ---------------------------------------------------------------------------
// CGI

/// What feeding some stdout to a [`CgiHeadParser`] came to, comparable.
#[derive(Debug, Clone, PartialEq)]
enum HeadResult {
    Head {
        status: StatusCode,
        headers: HeaderMap,
        /// `body_start` followed by every chunk not yet pushed.
        body: Vec<u8>,
    },
    Error(CgiError),
}

fn head_result(head: ParsedHead, rest: &[&[u8]]) -> HeadResult {
    let mut body = head.body_start.to_vec();
    for chunk in rest {
        body.extend_from_slice(chunk);
    }
    HeadResult::Head {
        status: head.status,
        headers: head.headers,
        body,
    }
}

/// Pushes `chunks` in order until the parser answers; `finish`es if
/// stdout runs out first. Also checks that the parser is spent afterwards.
fn feed(chunks: &[&[u8]]) -> HeadResult {
    let mut parser = CgiHeadParser::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let answer = match parser.push(chunk) {
            Ok(None) => continue,
            Ok(Some(head)) => head_result(head, &chunks[i + 1..]),
            Err(e) => HeadResult::Error(e),
        };
        assert_eq!(parser.push(b"x").unwrap_err(), CgiError::Spent);
        return answer;
    }
    match parser.finish() {
        Ok(_) => panic!("finish returned a head"),
        Err(e) => HeadResult::Error(e),
    }
}

/// Splits `data` at `cuts` (any number, possibly empty chunks).
fn chunks<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in at {
        out.push(&data[from..cut]);
        from = cut;
    }
    out.push(&data[from..]);
    out
}

/// Stdout-like bytes: arbitrary bytes, and concatenations of head
/// fragments (header lines, line ends, colons, blank lines) with noise.
fn stdout_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Each fixed fragment is drawn as often as the noise.
    const FRAGMENTS: [&[u8]; 13] = [
        b"Status: 200",
        b"Status: 404 Not Found",
        b"status:99",
        b"Content-Type: text/plain",
        b"Location: /x",
        b"X-A: 1",
        b"Bad Name: 1",
        b"\r\n",
        b"\n",
        b"\r",
        b"\n\n",
        b":",
        b" \t",
    ];
    let fragment = prop_oneof![
        FRAGMENTS.len() as u32 => select(FRAGMENTS.to_vec()).prop_map(<[u8]>::to_vec),
        1 => vec(any::<u8>(), 0..8),
    ];
    prop_oneof![
        vec(any::<u8>(), 0..300),
        vec(fragment, 0..40).prop_map(|parts| parts.concat()),
    ]
}

/// One generated header line.
#[derive(Debug, Clone)]
struct Line {
    name: String,
    value: String,
    before: String,
    after: String,
    crlf: bool,
}

fn line(
    name: impl Strategy<Value = String>,
    value: impl Strategy<Value = String>,
) -> impl Strategy<Value = Line> {
    (name, value, ows(), ows(), any::<bool>()).prop_map(|(name, value, before, after, crlf)| Line {
        name,
        value,
        before,
        after,
        crlf,
    })
}

/// A header value as a guest would write it: visible characters (non-ASCII
/// UTF-8 too) with inner spaces and tabs; possibly empty.
fn header_value() -> impl Strategy<Value = String> {
    "([!-~é€]([ \t!-~é]{0,20}[!-~€])?)?"
}

/// A valid CGI response: its bytes and the head it should parse to
/// (status, headers in order) plus the body; or `None` as the expected
/// head if it lacks every header RFC 3875 requires.
#[derive(Debug, Clone)]
struct ValidResponse {
    bytes: Vec<u8>,
    expected: HeadResult,
}

fn valid_response() -> impl Strategy<Value = ValidResponse> {
    let token = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}";
    let status = (
        100..=999u16,
        prop_oneof![Just(String::new()), "[ \t][A-Za-z ]{0,20}"],
    )
        .prop_map(|(code, reason)| format!("{code}{reason}"));
    let status = prop::option::of(line(
        prop_oneof![Just("Status"), Just("status"), Just("STATUS")].prop_map(String::from),
        status,
    ));
    let content_type = prop::option::of(line(
        prop_oneof![Just("Content-Type"), Just("content-type")].prop_map(String::from),
        "[a-z]{1,10}/[a-z0-9.+-]{1,10}(; charset=utf-8)?",
    ));
    let location = prop::option::of(line(
        Just("Location".to_string()),
        "(https://[a-z]{1,8}\\.example)?/[a-z0-9/]{0,20}",
    ));
    let others = vec(
        line(
            token.prop_filter("not Status", |n: &String| !n.eq_ignore_ascii_case("status")),
            header_value(),
        ),
        0..6,
    );
    (
        status,
        content_type,
        location,
        others,
        any::<bool>(),
        vec(any::<u8>(), 0..64),
    )
        .prop_flat_map(|(status, content_type, location, mut others, crlf, body)| {
            others.extend(content_type);
            others.extend(location);
            let has_status = status.is_some();
            others.extend(status);
            (
                Just(others).prop_shuffle(),
                Just(has_status),
                Just(crlf),
                Just(body),
            )
        })
        .prop_map(|(lines, has_status, crlf, body)| {
            let mut bytes = Vec::new();
            let mut headers = HeaderMap::new();
            let mut status = None;
            for l in &lines {
                let end = if l.crlf { "\r\n" } else { "\n" };
                let text = format!("{}:{}{}{}{end}", l.name, l.before, l.value, l.after);
                bytes.extend_from_slice(text.as_bytes());
                if l.name.eq_ignore_ascii_case("status") {
                    status = Some(StatusCode::from_bytes(&l.value.as_bytes()[..3]).unwrap());
                } else {
                    headers.append(
                        HeaderName::from_bytes(l.name.as_bytes()).unwrap(),
                        HeaderValue::from_bytes(l.value.as_bytes()).unwrap(),
                    );
                }
            }
            assert_eq!(status.is_some(), has_status);
            bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            bytes.extend_from_slice(&body);
            let has_location = headers.contains_key(http::header::LOCATION);
            let expected = if status.is_none()
                && !has_location
                && !headers.contains_key(http::header::CONTENT_TYPE)
            {
                HeadResult::Error(CgiError::MissingHeaders)
            } else {
                HeadResult::Head {
                    status: status.unwrap_or(if has_location {
                        StatusCode::FOUND
                    } else {
                        StatusCode::OK
                    }),
                    headers,
                    body,
                }
            };
            ValidResponse { bytes, expected }
        })
}

/// A request header name: mostly tokens, some that CGI must leave out.
fn request_header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.-]{1,12}",
        1 => prop_oneof![
            Just("proxy"),
            Just("Proxy"),
            Just("content-type"),
            Just("Content-Length"),
            Just("cookie"),
            Just("host"),
            Just("x-a"),
            Just("x_a"),
        ]
        .prop_map(String::from),
    ]
}

/// A request header value: any bytes `HeaderValue` accepts (tab, visible
/// ASCII, space, and bytes ≥ 0x80, which need not be UTF-8).
fn request_header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,12}".prop_map(String::into_bytes),
        "[ -~é]{0,12}".prop_map(String::into_bytes),
        vec(prop_oneof![Just(b'\t'), 0x20..0x7fu8, 0x80..=0xffu8], 0..12),
    ]
}

fn request_meta(headers: HeaderMap, remote_addr: IpAddr) -> RequestMeta {
    RequestMeta {
        method: Method::GET,
        script_name: "/app".into(),
        path_info: "/x".into(),
        query_string: String::new(),
        server_name: "localhost".into(),
        server_port: 8080,
        server_protocol: "HTTP/1.1".into(),
        remote_addr,
        remote_port: 40000,
        content_type: None,
        content_length: None,
        headers,
    }
}

proptest! {
    /// Stdout pushed in arbitrary chunks gives the same head (status,
    /// headers, and body bytes) or the same error as pushed whole; nothing
    /// panics; and a head found is a prefix of stdout ending in a blank line
    /// and within the size limit.
    #[test]
    fn cgi_parser_is_chunking_invariant(
        data in stdout_bytes(),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let whole = feed(&[&data]);
        let chunked = feed(&chunks(&data, &cuts));
        prop_assert_eq!(&chunked, &whole);
        // Byte by byte, the slowest guest.
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        prop_assert_eq!(&feed(&bytes), &whole);
        match whole {
            HeadResult::Head { status, body, .. } => {
                prop_assert!((100..=999).contains(&status.as_u16()));
                let head = &data[..data.len() - body.len()];
                prop_assert_eq!(&data[head.len()..], &body[..]);
                prop_assert!(head.len() <= MAX_CGI_HEAD_BYTES);
                prop_assert!(
                    head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
                    "head {:?} does not end in a blank line", String::from_utf8_lossy(head)
                );
            }
            HeadResult::Error(CgiError::Empty) => prop_assert!(data.is_empty()),
            HeadResult::Error(CgiError::Unterminated { len }) => {
                prop_assert_eq!(len, data.len());
                prop_assert!(len <= MAX_CGI_HEAD_BYTES);
            }
            HeadResult::Error(CgiError::Spent) => prop_assert!(false, "spent on first use"),
            HeadResult::Error(_) => {}
        }
    }

    /// A generated valid response (Status, Content-Type, Location and other
    /// headers in any order, `\n` or `\r\n` endings, optional whitespace
    /// around values, blank line, body) parses to the expected status,
    /// headers in order and body start, whole or in chunks.
    #[test]
    fn cgi_parser_parses_generated_heads(
        response in valid_response(),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        prop_assert_eq!(&feed(&[&response.bytes]), &response.expected);
        prop_assert_eq!(&feed(&chunks(&response.bytes, &cuts)), &response.expected);
    }

    /// A head up to `MAX_CGI_HEAD_BYTES` (blank line included) is accepted and
    /// one byte more is rejected, however the bytes arrive.
    #[test]
    fn cgi_parser_enforces_the_head_size_limit(
        head_len in prop_oneof![
            MAX_CGI_HEAD_BYTES - 64..=MAX_CGI_HEAD_BYTES + 64,
            MAX_CGI_HEAD_BYTES + 1..=4 * MAX_CGI_HEAD_BYTES,
            100..=MAX_CGI_HEAD_BYTES,
        ],
        crlf in any::<bool>(),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        let (end, blank): (&str, &str) = if crlf { ("\r\n", "\r\n") } else { ("\n", "\n") };
        let prefix = format!("Content-Type: a/b{end}X-Fill: ");
        let fill = head_len - prefix.len() - end.len() - blank.len();
        let out = format!("{prefix}{}{end}{blank}body", "y".repeat(fill));
        prop_assert_eq!(out.len() - "body".len(), head_len);
        for result in [feed(&[out.as_bytes()]), feed(&chunks(out.as_bytes(), &cuts))] {
            if head_len <= MAX_CGI_HEAD_BYTES {
                let HeadResult::Head { body, headers, .. } = result else {
                    panic!("head of {head_len} bytes rejected: {result:?}");
                };
                prop_assert_eq!(body, b"body".to_vec());
                prop_assert_eq!(headers["x-fill"].len(), fill);
            } else {
                prop_assert_eq!(result, HeadResult::Error(CgiError::HeadTooLarge));
            }
        }
        // Without any blank line the parser gives up once past the limit.
        let endless = format!("{prefix}{}", "y".repeat(head_len));
        let result = feed(&chunks(endless.as_bytes(), &cuts));
        let expected = if endless.len() > MAX_CGI_HEAD_BYTES {
            CgiError::HeadTooLarge
        } else {
            CgiError::Unterminated { len: endless.len() }
        };
        prop_assert_eq!(result, HeadResult::Error(expected));
    }

    /// `split_path` always splits a path into a `SCRIPT_NAME` without a
    /// trailing slash and a `PATH_INFO` that is empty or starts with `/`,
    /// which concatenate back to the path; and it uses the prefix exactly
    /// when the path is under it segment-wise.
    #[test]
    fn split_path_concatenates_back(
        prefix in prop_oneof!["(/[a-z]{0,3}){0,3}/{0,2}", any::<String>()],
        path in prop_oneof!["(/[a-z]{0,3}){0,4}/?", any::<String>()],
    ) {
        let (script_name, path_info) = split_path(&prefix, &path);
        prop_assert_eq!(format!("{script_name}{path_info}"), path.clone());
        prop_assert!(!script_name.ends_with('/'), "{:?}", script_name);
        let base = prefix.trim_end_matches('/');
        let under = path == base || path.starts_with(&format!("{base}/"));
        if under {
            prop_assert_eq!(script_name.as_str(), base);
            prop_assert!(path_info.is_empty() || path_info.starts_with('/'));
        } else {
            prop_assert_eq!(script_name.as_str(), "");
            prop_assert_eq!(path_info, path);
        }
    }

    /// `meta_variables` passes on exactly the usable request headers as
    /// `HTTP_*` (name upper-cased, `-` → `_`; repeats joined with `, `, or
    /// `; ` for Cookie) and leaves out Content-Type, Content-Length, Proxy,
    /// names with other characters and values that are not UTF-8. Every
    /// variable appears once, with a name of `[A-Z0-9_]`.
    #[test]
    fn meta_variables_match_a_model(
        headers in vec((request_header_name(), request_header_value()), 0..10),
        ip in any::<u32>(),
        mapped in any::<bool>(),
    ) {
        let mut map = HeaderMap::new();
        // Model: lower-cased name → values in order.
        let mut model: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (name, value) in &headers {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            let value = HeaderValue::from_bytes(value).unwrap();
            model.entry(name.as_str().to_owned()).or_default().push(value.as_bytes().to_vec());
            map.append(name, value);
        }
        let v4 = Ipv4Addr::from(ip);
        let remote = if mapped { IpAddr::V6(v4.to_ipv6_mapped()) } else { IpAddr::V4(v4) };
        let vars = meta_variables(&request_meta(map, remote));

        let names: BTreeSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        prop_assert_eq!(names.len(), vars.len(), "a variable appears twice: {:?}", vars);
        for (name, _) in &vars {
            prop_assert!(
                name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "{:?}", name
            );
        }
        let remote_addr = vars.iter().find(|(n, _)| n == "REMOTE_ADDR").map(|(_, v)| v.clone());
        prop_assert_eq!(remote_addr, Some(v4.to_string()));

        let expected: BTreeMap<String, String> = model
            .iter()
            .filter(|(name, _)| {
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !["content-type", "content-length", "proxy"].contains(&name.as_str())
            })
            .filter_map(|(name, values)| {
                let values: Vec<&str> = values
                    .iter()
                    .map(|v| std::str::from_utf8(v).ok())
                    .collect::<Option<_>>()?;
                let sep = if name == "cookie" { "; " } else { ", " };
                Some((
                    format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_")),
                    values.join(sep),
                ))
            })
            .collect();
        let got: BTreeMap<String, String> = vars
            .iter()
            .filter(|(n, _)| n.starts_with("HTTP_"))
            .cloned()
            .collect();
        prop_assert_eq!(got, expected);
        // The 11 fixed variables, and no CONTENT_* without the meta fields.
        prop_assert_eq!(vars.iter().filter(|(n, _)| !n.starts_with("HTTP_")).count(), 11);
    }
}

// ---------------------------------------------------------------------------
// Configuration

/// Text that looks like a configuration file: sections, known and unknown
/// keys, values of every type, and stray punctuation.
fn config_like_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[server]\n"),
        Just("[limits]\n"),
        Just("[[route]]\n"),
        Just("[route.limits]\n"),
        Just("path = \"/a/\"\n"),
        Just("path = \"a\"\n"),
        Just("path = \"/\"\n"),
        Just("module = \"m.wasm\"\n"),
        Just("fuel = 10\n"),
        Just("fuel = -1\n"),
        Just("max-memory = \"1MiB\"\n"),
        Just("max-memory = 99999999999999999999\n"),
        Just("max-memory = \"lots\"\n"),
        Just("timeout = \"2s\"\n"),
        Just("timeout = \"9999h\"\n"),
        Just("limits = { fuel = 1, max-memory = 65536 }\n"),
        Just("env = { A = \"1\" }\n"),
        Just("dirs = [\"data::/data:rw\"]\n"),
        Just("addr = \"127.0.0.1:1\"\n"),
        Just("admin-addr = \"[::1]:9\"\n"),
        Just("max-body = 12\n"),
        Just("max-queue = 3\n"),
        Just("header-timeout = \"1ms\"\n"),
        Just("= \"\n"),
        Just("[[\n"),
        Just("{"),
        Just("}"),
        Just("\n"),
    ]
    .prop_map(String::from);
    prop_oneof![
        vec(prop_oneof![3 => piece, 1 => "[ -~]{0,10}"], 0..20).prop_map(|p| p.concat()),
        any::<String>(),
    ]
}

/// A generated route: its spelling in the file and what it should resolve to.
#[derive(Debug, Clone)]
struct GenRoute {
    segments: Vec<String>,
    trailing_slashes: usize,
    module: String,
    fuel: Option<u64>,
    max_memory: Option<(u64, bool)>,
    timeout_secs: Option<u64>,
    env: BTreeMap<String, String>,
    dirs: Vec<(String, Option<String>, Option<bool>)>,
}

impl GenRoute {
    fn path(&self) -> String {
        format!(
            "/{}{}",
            self.segments.join("/"),
            "/".repeat(self.trailing_slashes)
        )
    }

    fn prefix(&self) -> String {
        format!("/{}", self.segments.join("/"))
    }

    fn toml(&self, path: &str) -> String {
        let mut t = format!(
            "[[route]]\npath = \"{path}\"\nmodule = \"{}\"\n",
            self.module
        );
        let mut limits = Vec::new();
        if let Some(fuel) = self.fuel {
            limits.push(format!("fuel = {fuel}"));
        }
        match self.max_memory {
            Some((bytes, true)) => limits.push(format!("max-memory = \"{}\"", ByteSize(bytes))),
            Some((bytes, false)) => limits.push(format!("max-memory = {bytes}")),
            None => {}
        }
        if let Some(secs) = self.timeout_secs {
            limits.push(format!("timeout = \"{secs}s\""));
        }
        if !limits.is_empty() {
            t += &format!("limits = {{ {} }}\n", limits.join(", "));
        }
        if !self.env.is_empty() {
            let env: Vec<String> = self
                .env
                .iter()
                .map(|(k, v)| format!("{k} = \"{v}\""))
                .collect();
            t += &format!("env = {{ {} }}\n", env.join(", "));
        }
        if !self.dirs.is_empty() {
            let dirs: Vec<String> = self
                .dirs
                .iter()
                .map(|(host, guest, rw)| {
                    let guest = guest.as_ref().map_or(String::new(), |g| format!("::{g}"));
                    let access = match rw {
                        Some(true) => ":rw",
                        Some(false) => ":ro",
                        None => "",
                    };
                    format!("\"{host}{guest}{access}\"")
                })
                .collect();
            t += &format!("dirs = [{}]\n", dirs.join(", "));
        }
        t
    }
}

fn gen_route_attrs(segments: Vec<String>) -> impl Strategy<Value = GenRoute> {
    (
        0..3usize,
        "[a-z0-9_-]{1,10}\\.wasm",
        prop::option::of(any::<u64>().prop_map(|f| f >> 1)),
        prop::option::of((0..=wasm_run::limits::MAX_MEMORY_CEILING, any::<bool>())),
        prop::option::of(0..=86_400u64),
        btree_map("[A-Z_][A-Z0-9_]{0,8}", "[a-zA-Z0-9 _./:=-]{0,12}", 0..3),
        vec(
            (
                "[a-z]{1,6}",
                prop::option::of("/[a-z]{1,6}"),
                prop::option::of(any::<bool>()),
            ),
            0..3,
        ),
    )
        .prop_map(
            move |(trailing_slashes, module, fuel, max_memory, timeout_secs, env, dirs)| GenRoute {
                segments: segments.clone(),
                trailing_slashes,
                module,
                fuel,
                max_memory,
                timeout_secs,
                env,
                dirs,
            },
        )
}

/// A route table with distinct prefixes (spelled with or without trailing
/// slashes), in random order, and an optional file-wide fuel default.
fn route_table() -> impl Strategy<Value = (Vec<GenRoute>, Option<u64>)> {
    let table = btree_set(vec("[a-z0-9_.~-]{1,6}", 0..4), 1..6).prop_flat_map(|set| {
        set.into_iter()
            .map(gen_route_attrs)
            .collect::<Vec<_>>()
            .prop_shuffle()
    });
    (table, prop::option::of(0..1_000_000u64))
}

fn table_text(routes: &[GenRoute], default_fuel: Option<u64>) -> String {
    let mut text = String::new();
    if let Some(fuel) = default_fuel {
        text += &format!("[limits]\nfuel = {fuel}\n");
    }
    for r in routes {
        text += &r.toml(&r.path());
    }
    text
}

const CONFIG_PATH: &str = "/etc/wr/config.toml";

proptest! {
    /// Arbitrary (and config-like) text never makes the config parser
    /// panic; whatever parses also resolves without panicking, to routes
    /// whose prefixes are the normalised paths.
    #[test]
    fn config_parser_never_panics(text in config_like_text()) {
        if let Ok(file) = toml::from_str::<ConfigFile>(&text) {
            let defaults = file.limits.apply(&default_limits());
            if let Ok(routes) = resolve_routes(&file, Path::new(CONFIG_PATH), &defaults) {
                prop_assert_eq!(routes.len(), file.route.len());
                for (spec, section) in routes.iter().zip(&file.route) {
                    prop_assert_eq!(Some(spec.prefix.clone()), normalise_prefix(&section.path));
                }
            }
        }
    }

    /// `normalise_prefix` accepts exactly the absolute paths without `?` or
    /// `#`, strips trailing slashes (keeping `/` for the root), and is
    /// idempotent.
    #[test]
    fn normalise_prefix_is_idempotent(
        path in prop_oneof!["[/a-z.?#]{0,12}", "/+", any::<String>()],
    ) {
        let normal = normalise_prefix(&path);
        let valid = path.starts_with('/') && !path.contains(['?', '#']);
        prop_assert_eq!(normal.is_some(), valid, "{:?}", path);
        if let Some(p) = normal {
            prop_assert!(p.starts_with('/'), "{:?}", p);
            prop_assert!(p == "/" || !p.ends_with('/'), "{:?}", p);
            prop_assert!(path.starts_with(p.trim_end_matches('/')));
            let trimmed = path.trim_end_matches('/');
            prop_assert_eq!(p.as_str(), if trimmed.is_empty() { "/" } else { trimmed });
            prop_assert_eq!(normalise_prefix(&p), Some(p));
        }
    }

    /// A generated route table resolves to one route per entry, in order,
    /// with the normalised prefix, the module and directories resolved
    /// against the file's directory, the route's limits over the file's
    /// defaults, and its environment.
    #[test]
    fn route_tables_resolve((routes, default_fuel) in route_table()) {
        let text = table_text(&routes, default_fuel);
        let file: ConfigFile = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("generated config does not parse: {e}\n{text}"));
        let defaults = file.limits.apply(&default_limits());
        prop_assert_eq!(defaults.fuel, default_fuel);
        let resolved = resolve_routes(&file, Path::new(CONFIG_PATH), &defaults)
            .unwrap_or_else(|e| panic!("generated routes rejected: {e}\n{text}"));
        prop_assert_eq!(resolved.len(), routes.len());
        let base = Path::new("/etc/wr");
        for (spec, r) in resolved.iter().zip(&routes) {
            prop_assert_eq!(&spec.prefix, &r.prefix());
            prop_assert_eq!(&spec.module, &ModuleSource::File(base.join(&r.module)));
            let expected = Limits {
                fuel: r.fuel.or(default_fuel),
                max_memory: r.max_memory.map_or(default_limits().max_memory, |(b, _)| b),
                timeout: Some(r.timeout_secs.map_or(default_limits().timeout.unwrap(), Duration::from_secs)),
                ..Limits::default()
            };
            prop_assert_eq!(&spec.limits, &expected);
            let env: Vec<(String, String)> = r.env.clone().into_iter().collect();
            prop_assert_eq!(&spec.env, &env);
            prop_assert_eq!(spec.dirs.len(), r.dirs.len());
            for (dir, (host, guest, rw)) in spec.dirs.iter().zip(&r.dirs) {
                prop_assert_eq!(&dir.host, &base.join(host));
                prop_assert_eq!(&dir.guest, guest.as_ref().unwrap_or(host));
                prop_assert_eq!(dir.read_only, *rw != Some(true), "routes are read-only by default");
            }
        }
    }

    /// Routing a prefix twice (however it is spelled) or a relative path is
    /// rejected, naming the offending route.
    #[test]
    fn bad_route_tables_are_rejected(
        (routes, default_fuel) in route_table(),
        which in any::<Index>(),
        extra_slashes in 0..3usize,
        relative in any::<bool>(),
    ) {
        let mut text = table_text(&routes, default_fuel);
        let dup = &routes[which.index(routes.len())];
        let (bad_path, message) = if relative {
            (dup.prefix().trim_start_matches('/').to_string() + "x", "must start with `/`")
        } else {
            (format!("{}{}", dup.path(), "/".repeat(extra_slashes)), "is routed twice")
        };
        text += &dup.toml(&bad_path);
        let file: ConfigFile = toml::from_str(&text).unwrap();
        let err = resolve_routes(&file, Path::new(CONFIG_PATH), &default_limits())
            .expect_err("bad route accepted");
        let err = err.to_string();
        prop_assert!(err.starts_with(CONFIG_PATH), "{}", err);
        prop_assert!(err.contains(&format!("route {}:", routes.len() + 1)), "{}", err);
        prop_assert!(err.contains(message), "{}", err);
    }
}

/// The generators themselves produce what they claim (guards against a
/// generator change that would make the properties vacuous).
#[test]
fn generators_cover_their_ground() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut heads, mut missing) = (0, 0);
    for _ in 0..200 {
        let r = valid_response().new_tree(&mut runner).unwrap().current();
        match r.expected {
            HeadResult::Head { .. } => heads += 1,
            HeadResult::Error(_) => missing += 1,
        }
    }
    assert!(
        heads > 100 && missing > 0,
        "{heads} heads, {missing} missing"
    );
    let mut over = 0;
    for _ in 0..200 {
        let (routes, _) = route_table().new_tree(&mut runner).unwrap().current();
        over += routes.iter().filter(|r| r.trailing_slashes > 0).count();
        assert!(!routes.is_empty());
    }
    assert!(over > 0);
}
