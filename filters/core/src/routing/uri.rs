//! Strict percent-decoding of path segments and query strings.
//!
//! Lenient decoders pass `%zz` through unchanged; a gateway must not, or the proxy and the
//! FHIR server can disagree about what a request means. Every `%` must start a valid escape
//! and the decoded bytes must be UTF-8 (which also refuses overlong encodings).

use percent_encoding::percent_decode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// Decoded bytes are not UTF-8, or decode to a control character.
    BadUtf8,
}

/// Decodes one path segment or query component. `plus_is_space` applies the
/// `application/x-www-form-urlencoded` rule used by FHIR search parameters.
pub fn decode(raw: &str, plus_is_space: bool) -> Result<String, UriError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    let mut escaped = false;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(UriError::BadEscape);
            }
            escaped = true;
            i += 3;
        } else {
            i += 1;
        }
    }
    let has_plus = plus_is_space && raw.contains('+');
    if !escaped && !has_plus {
        return check_controls(raw.to_owned());
    }
    let spaced;
    let source: &[u8] = if has_plus {
        spaced = raw.replace('+', " ");
        spaced.as_bytes()
    } else {
        bytes
    };
    let decoded = percent_decode(source)
        .decode_utf8()
        .map_err(|_| UriError::BadUtf8)?;
    check_controls(decoded.into_owned())
}

/// Control characters (NUL, CR, LF, …) have no place in a FHIR path or parameter and are a
/// classic header-smuggling vehicle.
fn check_controls(s: String) -> Result<String, UriError> {
    if s.chars().any(|c| c.is_control()) {
        Err(UriError::BadUtf8)
    } else {
        Ok(s)
    }
}

/// One decoded query parameter. `name` keeps its modifiers and chains (`subject:Patient.name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    Uri(UriError),
    /// A parameter name with characters FHIR search never uses.
    BadName,
    TooMany,
}

/// Splits and decodes a raw query (`a=1&b=2`). Empty pieces (`a=1&&b=2`) are skipped.
pub fn parse_query(raw: &str, max_params: usize) -> Result<Vec<Param>, QueryError> {
    let mut params = Vec::new();
    for piece in raw.split('&') {
        if piece.is_empty() {
            continue;
        }
        if params.len() == max_params {
            return Err(QueryError::TooMany);
        }
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = decode(name, true).map_err(QueryError::Uri)?;
        if !is_valid_param_name(&name) {
            return Err(QueryError::BadName);
        }
        let value = decode(value, true).map_err(QueryError::Uri)?;
        params.push(Param { name, value });
    }
    Ok(params)
}

/// Search parameter names, with modifiers (`:exact`), chains (`.name`), reverse chains
/// (`_has:Observation:patient:code`) and `_`-prefixed results parameters.
fn is_valid_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'$' | b'[' | b']')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_valid_escapes() {
        let cases = [
            ("abc", false, "abc"),
            ("a%20b", false, "a b"),
            ("a+b", false, "a+b"),
            ("a+b", true, "a b"),
            ("%2B", true, "+"),
            ("%C3%A9", false, "é"),
            (
                "http%3A%2F%2Floinc.org%7C1234-5",
                true,
                "http://loinc.org|1234-5",
            ),
            ("", false, ""),
            ("%41%42", false, "AB"),
            ("%e2%82%ac", false, "€"),
        ];
        for (raw, plus, want) in cases {
            assert_eq!(decode(raw, plus).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_malformed_escapes() {
        for raw in ["%", "%2", "%zz", "a%g1", "%%", "abc%", "%2%41", "%-1"] {
            assert_eq!(decode(raw, true), Err(UriError::BadEscape), "{raw}");
        }
    }

    #[test]
    fn refuses_invalid_utf8_and_overlong_forms() {
        // %C0%AF is an overlong '/', %E0%80%AF an overlong '/' too; %FF is never UTF-8.
        for raw in ["%C0%AF", "%E0%80%AF", "%FF", "%C3", "%ED%A0%80"] {
            assert_eq!(decode(raw, false), Err(UriError::BadUtf8), "{raw}");
        }
    }

    #[test]
    fn refuses_control_characters() {
        for raw in ["%00", "a%0Db", "%0A", "%7F", "a%09b"] {
            assert_eq!(decode(raw, false), Err(UriError::BadUtf8), "{raw}");
        }
    }

    #[test]
    fn parses_query_parameters_in_order() {
        let q = parse_query(
            "patient=123&code=http%3A%2F%2Floinc.org%7C1234&_count=10&&_sort=-date",
            10,
        )
        .unwrap();
        let pairs: Vec<_> = q
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("patient", "123"),
                ("code", "http://loinc.org|1234"),
                ("_count", "10"),
                ("_sort", "-date")
            ]
        );
    }

    #[test]
    fn keeps_modifiers_chains_and_reverse_chains_in_names() {
        let q = parse_query(
            "subject:Patient.name=x&_has:Observation:patient:code=1&code:not=2&flag",
            10,
        )
        .unwrap();
        let names: Vec<_> = q.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "subject:Patient.name",
                "_has:Observation:patient:code",
                "code:not",
                "flag"
            ]
        );
        assert_eq!(q[3].value, "");
    }

    #[test]
    fn refuses_bad_names_and_too_many_params() {
        assert_eq!(parse_query("a b=1", 10), Err(QueryError::BadName));
        assert_eq!(parse_query("=1", 10), Err(QueryError::BadName));
        assert_eq!(parse_query("a%3Cscript%3E=1", 10), Err(QueryError::BadName));
        assert_eq!(parse_query("a=1&b=2&c=3", 2), Err(QueryError::TooMany));
        assert!(parse_query("a=1&b=2", 2).is_ok());
        assert_eq!(
            parse_query("a=%zz", 2),
            Err(QueryError::Uri(UriError::BadEscape))
        );
    }
}
