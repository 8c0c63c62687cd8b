//! Query strings for the guests (included by `cli/src/bin/demo.rs` and
//! `http/src/lib.rs`, which share no crate but std).

/// The value of `key` in a query string: pairs split on `&` and `=`, with
/// `+` and `%XX` decoded; `None` if absent.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(name) == key).then(|| decode(value))
    })
}

/// The value of `key` parsed as a `T`; `None` if absent or if it does not
/// parse.
pub fn query_parsed<T: std::str::FromStr>(query: &str, key: &str) -> Option<T> {
    query_param(query, key).and_then(|value| value.parse().ok())
}

/// Decodes `+` to a space and `%XX` to its byte; malformed escapes are kept.
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        decoded.push(byte);
                        i += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
