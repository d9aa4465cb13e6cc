//! The consent fast path's byte scan: one pass over a response body that validates it as JSON
//! and finds, at the same time, everything that could make the full filter change it.
//!
//! It replaces five substring searches, a UTF-8 check and a serde skim of the same bytes
//! (measured in V8: about 52 instructions per byte, where this pass costs a few), so that a
//! response nothing can be withheld from is released for little more than reading it once.
//! It is conservative: whatever it is unsure of sends the response to the full parse.

/// What the scan found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    /// Well-formed FHIR JSON with no label, no Patient resource and no escape that could hide
    /// one; every patient it can name appears among these `Patient/<id>` ids (in order of
    /// first appearance, each once).
    Clean(Vec<&'a str>),
    /// Only the full parse can decide: malformed, or something that might need filtering.
    Parse,
}

/// The deepest nesting serde_json parses (its limit of 128 refuses the 128th level): deeper
/// documents the full parse refuses.
const MAX_DEPTH: usize = 127;

/// Scans `body`. `want_patients`: collect `Patient/<id>` ids (only needed when Consents are
/// configured).
pub fn scan(body: &[u8], want_patients: bool) -> Scan<'_> {
    let mut scanner = Scanner {
        body,
        at: 0,
        want_patients,
        patients: Vec::new(),
        resource_types: 0,
        saw_total: false,
        saw_page_link: false,
        last_key: b"",
    };
    match scanner.document() {
        Some(())
            if scanner.resource_types == 1 && !(scanner.saw_total && scanner.saw_page_link) =>
        {
            Scan::Clean(scanner.patients)
        }
        _ => Scan::Parse,
    }
}

struct Scanner<'a> {
    body: &'a [u8],
    at: usize,
    want_patients: bool,
    patients: Vec<&'a str>,
    /// `resourceType` keys of the top-level object whose value is a string.
    resource_types: usize,
    /// A top-level `total`, and a `next`/`previous` link relation: a page of a longer search
    /// whose total the filter must take out (it counts other pages' matches).
    saw_total: bool,
    saw_page_link: bool,
    /// The key of the value being read: a `reference` value is judged strictly (a Patient
    /// reference no lookup can follow goes to the parse), a `relation` value may be a page
    /// link. Kept as a slice and compared only when a value needs it, so most keys cost one
    /// store.
    last_key: &'a [u8],
}

/// Where a value stands: what may come next is decided by the container it is in.
#[derive(Clone, Copy, PartialEq)]
enum Container {
    Object,
    Array,
}

impl Container {
    fn closing(self) -> u8 {
        match self {
            Container::Object => b'}',
            Container::Array => b']',
        }
    }
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// The whole body: one object, nothing after it but whitespace. `None`: send to the parse.
    fn document(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.peek()? != b'{' {
            return None;
        }
        self.value_tree()?;
        self.skip_whitespace();
        (self.at == self.body.len()).then_some(())
    }

    /// A value and everything nested in it, with an explicit stack (no recursion: a deep
    /// document costs no stack, and past serde_json's limit it goes to the parse).
    fn value_tree(&mut self) -> Option<()> {
        let mut stack: Vec<Container> = Vec::new();
        // The top-level object's key just read, if it was `resourceType`.
        let mut resource_type_key = false;
        loop {
            // A value.
            self.skip_whitespace();
            match self.peek()? {
                b'{' | b'[' => {
                    let container = if self.peek()? == b'{' {
                        Container::Object
                    } else {
                        Container::Array
                    };
                    self.at += 1;
                    if stack.len() == MAX_DEPTH {
                        return None;
                    }
                    stack.push(container);
                    self.skip_whitespace();
                    let close = container.closing();
                    if self.peek()? == close {
                        self.at += 1;
                        stack.pop();
                    } else {
                        if container == Container::Object {
                            resource_type_key = self.key(stack.len())?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    let text = self.string()?;
                    if resource_type_key {
                        self.resource_types += 1;
                    }
                    // A `"Patient"` string may be a Patient resource (whose id names its
                    // compartment) or a reference by type: the parse finds its patient.
                    if text == b"Patient" || text == b"security" {
                        return None;
                    }
                    if matches!(text.len(), 4 | 8) && self.last_key == b"relation" {
                        self.saw_page_link |= matches!(text, b"next" | b"previous" | b"prev");
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => self.number()?,
            }
            resource_type_key = false;
            // After a value: a separator, or the end of one or more containers.
            loop {
                let Some(&container) = stack.last() else {
                    return Some(());
                };
                self.skip_whitespace();
                let close = container.closing();
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        if container == Container::Object {
                            resource_type_key = self.key(stack.len())?;
                        }
                        break;
                    }
                    b if b == close => {
                        self.at += 1;
                        stack.pop();
                    }
                    _ => return None,
                }
            }
        }
    }

    /// An object's key and its colon; true if it is the top-level `resourceType`.
    fn key(&mut self, depth: usize) -> Option<bool> {
        self.skip_whitespace();
        if self.peek()? != b'"' {
            return None;
        }
        let key = self.string()?;
        // `securityContext`: a Binary judged by another resource's labels and patient.
        if key == b"security" || key == b"Patient" || key == b"securityContext" {
            return None;
        }
        self.saw_total |= depth == 1 && key == b"total";
        self.last_key = key;
        self.expect(b':')?;
        // A single `identifier` object is a Reference's (a resource's identifiers are a list,
        // but for a few 0..1 ones): it may name a patient only by identifier, which no Consent
        // lookup can follow. The parse decides (it withholds under Consents).
        if self.want_patients && key == b"identifier" {
            self.skip_whitespace();
            if self.peek()? == b'{' {
                return None;
            }
        }
        Some(depth == 1 && key == b"resourceType")
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.body.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. serde_json refuses a number that
    /// overflows a double (`1e400`); FHIR decimals may carry exponents (`1e-22`), so one is
    /// released only while the number stays far below that: at most three exponent digits, and
    /// under 10^300 with its integer digits counted in.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let int_start = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let int_digits = self.at - int_start;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            let negative = self.peek() == Some(b'-');
            if let Some(b'-' | b'+') = self.peek() {
                self.at += 1;
            }
            let start = self.at;
            self.digits();
            let digits = &self.body[start..self.at];
            if digits.is_empty() || digits.len() > 3 {
                return None;
            }
            let exponent = digits
                .iter()
                .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            if !negative && int_digits + exponent > 300 {
                return None;
            }
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// A string starting at its opening quote; returns its raw content (escapes as written)
    /// and leaves `at` after the closing quote. Collects `Patient/<id>` where the string starts
    /// with it or a `/` precedes it (a relative or an absolute reference).
    fn string(&mut self) -> Option<&'a [u8]> {
        let body = self.body;
        let start = self.at + 1;
        let mut i = start;
        loop {
            // Most of a body is plain text inside strings: jump to the next byte worth a look
            // (memchr compares a vector at a time where the target has them), then check the
            // text passed over as a whole.
            let rest = body.get(i..)?;
            let next = if self.want_patients {
                memchr::memchr3(b'"', b'\\', b'P', rest)
            } else {
                memchr::memchr2(b'"', b'\\', rest)
            }?;
            plain_text(&rest[..next])?;
            i += next;
            match body[i] {
                b'"' => break,
                b'\\' => i = escape_end(body, i)?,
                _ => {
                    // A `P` (only looked for when patients are wanted).
                    if body[i..].starts_with(b"Patient") {
                        let after = body.get(i + "Patient".len());
                        if self.last_key == b"reference" {
                            // Only a whole local reference (`Patient/<id>`, maybe with
                            // `/_history/<v>`) names a patient whose Consents can be fetched.
                            // An absolute, `urn:` or conditional one, or a malformed id, is a
                            // patient no lookup finds: the parse decides (it withholds).
                            if matches!(after, Some(b'/' | b'?'))
                                && (i != start
                                    || after == Some(&b'?')
                                    || !self.local_patient_at(i + "Patient/".len()))
                            {
                                return None;
                            }
                        } else if after == Some(&b'/') && (i == start || body[i - 1] == b'/') {
                            // Elsewhere (a narrative's link, an identifier) a mention only
                            // makes the patient's Consents worth fetching.
                            self.mention_at(i + "Patient/".len());
                        }
                    }
                    i += 1;
                }
            }
        }
        self.at = i + 1;
        Some(&body[start..i])
    }

    /// Collects the id-shaped run after a `Patient/` mentioned outside a reference.
    fn mention_at(&mut self, id_start: usize) {
        let rest = self.body.get(id_start..).unwrap_or_default();
        let id_len = rest
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
            .count();
        // Only ASCII bytes were taken: the slice is UTF-8.
        if let Ok(id) = std::str::from_utf8(&rest[..id_len]) {
            if !id.is_empty() && !self.patients.contains(&id) {
                self.patients.push(id);
            }
        }
    }

    /// Collects the id of a string that is a whole local Patient reference from `id_start`
    /// (after `Patient/`): a FHIR id, then the string's end or `/_history/<version>` and its
    /// end. False for anything else (`Patient?…`, a malformed id, more after it).
    fn local_patient_at(&mut self, id_start: usize) -> bool {
        let id_char = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.');
        let rest = self.body.get(id_start..).unwrap_or_default();
        let id_len = rest.iter().take_while(|b| id_char(b)).count();
        let after = &rest[id_len..];
        let whole = match after.first() {
            Some(b'"') => true,
            Some(b'/') => after.strip_prefix(b"/_history/").is_some_and(|v| {
                let v_len = v.iter().take_while(|b| id_char(b)).count();
                (1..=64).contains(&v_len) && v.get(v_len) == Some(&b'"')
            }),
            _ => false,
        };
        if !whole || !(1..=64).contains(&id_len) {
            return false;
        }
        // Only ASCII bytes were taken: the slice is UTF-8.
        let Ok(id) = std::str::from_utf8(&rest[..id_len]) else {
            return false;
        };
        if !self.patients.contains(&id) {
            self.patients.push(id);
        }
        true
    }
}

/// Text inside a string between the bytes the string loop stops at: no raw control character
/// (not JSON) and valid UTF-8. Two reductions with no early exit, which compile to vector
/// minimum and maximum; the UTF-8 check only runs where a byte is not ASCII. The text starts
/// and ends at ASCII bytes, so checking it alone judges the sequences in it whole.
fn plain_text(text: &[u8]) -> Option<()> {
    let (lowest, highest) = text
        .iter()
        .fold((u8::MAX, 0u8), |(lo, hi), &b| (lo.min(b), hi.max(b)));
    if lowest < 0x20 {
        return None;
    }
    if highest >= 0x80 {
        std::str::from_utf8(text).ok()?;
    }
    Some(())
}

/// Where an escape starting at `at` (the backslash) ends, if it is one the fast path may
/// release: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and `\u` of a character that is neither
/// ASCII (it could spell a key or a reference) nor a surrogate (the parse checks pairing).
/// `\/` could split `Patient/` from a scan's sight: it goes to the parse as well.
fn escape_end(body: &[u8], at: usize) -> Option<usize> {
    match *body.get(at + 1)? {
        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
        b'u' => {
            let hex = std::str::from_utf8(body.get(at + 2..at + 6)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let code = u32::from_str_radix(hex, 16).ok()?;
            (code >= 0x80 && !(0xD800..=0xDFFF).contains(&code)).then_some(at + 6)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(body: &str) -> Vec<&str> {
        match scan(body.as_bytes(), true) {
            Scan::Clean(patients) => patients,
            Scan::Parse => panic!("sent to the parse: {body}"),
        }
    }

    #[test]
    fn a_page_of_a_longer_search_with_a_total_goes_to_the_parse() {
        let paged = r#"{"resourceType":"Bundle","type":"searchset","total":40,"link":[{"relation":"next","url":"x"}],"entry":[]}"#;
        assert!(matches!(scan(paged.as_bytes(), false), Scan::Parse));
        let previous =
            r#"{"resourceType":"Bundle","total":40,"link":[{"relation":"previous","url":"x"}]}"#;
        assert!(matches!(scan(previous.as_bytes(), false), Scan::Parse));
        let whole = r#"{"resourceType":"Bundle","type":"searchset","total":2,"link":[{"relation":"self","url":"x"}],"entry":[]}"#;
        assert!(matches!(scan(whole.as_bytes(), false), Scan::Clean(_)));
        let no_total = r#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"next","url":"x"}]}"#;
        assert!(matches!(scan(no_total.as_bytes(), false), Scan::Clean(_)));
    }

    #[test]
    fn collects_every_patient_a_clean_response_names_once() {
        let body = r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}},
            {"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p2/_history/1"}}},
            {"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p1"}},"n":[1,-2.5,0,true,false,null,{},[]]}]}"#;
        assert_eq!(clean(body), vec!["p1", "p2"]);
        // A patient on another server (an absolute URL) has no Consents here: the parse
        // withholds what names one.
        let absolute =
            r#"{"resourceType":"Observation","subject":{"reference":"https://x/fhir/Patient/p2"}}"#;
        assert!(matches!(scan(absolute.as_bytes(), true), Scan::Parse));
        assert_eq!(
            clean(r#" {"resourceType" : "Observation" , "note" : "Patients"} "#),
            Vec::<&str>::new()
        );
        // Anything else naming `Patient/` or `Patient?` is a patient no lookup finds (the
        // parse withholds it if it sits on a patient element): found by the consent fuzz
        // target on a conditional reference.
        assert_eq!(
            clean(
                r#"{"resourceType":"Observation","text":{"div":"<a>Patient/p3</a> see x/Patient/p4"}}"#
            ),
            vec!["p4"],
            "a narrative's mention after a slash is fetched for; it is no reference"
        );
        for other in [
            r#"{"resourceType":"Observation","subject":{"reference":"Patient?e9}hample"}}"#,
            r#"{"resourceType":"Observation","subject":{"reference":"urn:x:Patient/1"}}"#,
            r#"{"resourceType":"Observation","subject":{"reference":"Patient/a b"}}"#,
            r#"{"resourceType":"Observation","subject":{"reference":"Patient/1/_history/"}}"#,
            r#"{"resourceType":"Observation","subject":{"reference":"Patient/"}}"#,
        ] {
            assert!(
                matches!(scan(other.as_bytes(), true), Scan::Parse),
                "{other}"
            );
        }
        assert_eq!(
            clean(r#"{"resourceType":"Observation","valueString":"0.9 g/cm\u00b2 \"q\" \\ é"}"#),
            Vec::<&str>::new()
        );
        let decimals = r#"{"resourceType":"Observation","component":[{"valueQuantity":{"value":1e-22}},{"valueQuantity":{"value":-1E+245}},{"valueQuantity":{"value":1.5e3}},{"valueQuantity":{"value":0E0}}]}"#;
        assert_eq!(
            clean(decimals),
            Vec::<&str>::new(),
            "FHIR decimals with exponents"
        );
    }

    #[test]
    fn does_not_collect_patients_when_not_asked() {
        assert_eq!(
            scan(
                br#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#,
                false
            ),
            Scan::Clean(vec![])
        );
    }

    #[test]
    fn sends_what_might_need_filtering_to_the_parse() {
        let cases = [
            r#"{"resourceType":"Patient","id":"p1"}"#,
            r#"{"resourceType":"Observation","meta":{"security":[{"code":"R"}]}}"#,
            r#"{"resourceType":"Observation","subject":{"type":"Patient","identifier":{"value":"1"}}}"#,
            r#"{"resourceType":"Observation","meta":{"\u0073ecurity":[]}}"#,
            r#"{"resourceType":"Observation","subject":{"reference":"Patient\/p1"}}"#,
            r#"{"resourceType":"Observation","x":"\ud83d\ude00"}"#,
            r#"{"resourceType":"Observation","x":"\uZZZZ"}"#,
            r#"{"resourceType":"Observation","valueQuantity":{"value":1e400}}"#,
            r#"{"resourceType":"Observation","valueQuantity":{"value":5E919999}}"#,
            r#"{"resourceType":"Observation","valueQuantity":{"value":1000e299}}"#,
            r#"{"resourceType":"Observation","valueQuantity":{"value":1e-1000}}"#,
        ];
        for body in cases {
            assert_eq!(scan(body.as_bytes(), true), Scan::Parse, "{body}");
        }
    }

    #[test]
    fn sends_malformed_json_to_the_parse() {
        let deep = format!(
            r#"{{"resourceType":"Basic","x":{}{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let cases: Vec<Vec<u8>> = vec![
            br#"{"resourceType": "Bundle", "type": " "http://loinc.org"}"#.to_vec(),
            b"{\"resourceType\":\"Observation\",\"note\":\"\x9b\"}".to_vec(),
            b"{\"resourceType\":\"Observation\",\"note\":\"\xed\xa0\x80\"}".to_vec(),
            b"{\"resourceType\":\"Observation\",\"note\":\"a\nb\"}".to_vec(),
            br#"{"resourceType":"Observation""#.to_vec(),
            br#"{"resourceType":"Observation"} trailing"#.to_vec(),
            br#"{"resourceType":"Observation",}"#.to_vec(),
            br#"{"resourceType":"Observation","a":[1,]}"#.to_vec(),
            br#"{"resourceType":"Observation","a":[1 2]}"#.to_vec(),
            br#"{"resourceType":"Observation","a":01}"#.to_vec(),
            br#"{"resourceType":"Observation","a":1.}"#.to_vec(),
            br#"{"resourceType":"Observation","a":-}"#.to_vec(),
            br#"{"resourceType":"Observation","a":1e}"#.to_vec(),
            br#"{"resourceType":"Observation","a":1e+}"#.to_vec(),
            br#"{"resourceType":"Observation","a":1.5E-}"#.to_vec(),
            br#"{"resourceType":"Observation","a":tru}"#.to_vec(),
            br#"{"resourceType":"Observation","a":{"b"}}"#.to_vec(),
            br#"{"resourceType":"Observation",'security':[]}"#.to_vec(),
            br#"{"resourceType":"Observation","a":[}"#.to_vec(),
            br#"{"resourceType":7}"#.to_vec(),
            br#"{"id":"no-type"}"#.to_vec(),
            br#"{"resourceType":"A","resourceType":"B"}"#.to_vec(),
            br#"{"a":{"resourceType":"Observation"}}"#.to_vec(),
            br#"["resourceType"]"#.to_vec(),
            b"\x0c{\"resourceType\":\"Observation\"}".to_vec(),
            deep.into_bytes(),
        ];
        for body in cases {
            assert_eq!(
                scan(&body, true),
                Scan::Parse,
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn accepts_nesting_up_to_serde_jsons_limit() {
        let depth = MAX_DEPTH - 1; // the top-level object is one level
        let body = format!(
            r#"{{"resourceType":"Basic","x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(scan(body.as_bytes(), true), Scan::Clean(vec![]));
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    }

    /// Whatever the scan accepts, serde_json parses too (the full filter's first step), on
    /// every prefix and one-byte edit of a realistic document.
    #[test]
    fn accepts_nothing_serde_json_refuses() {
        let doc = br#"{"resourceType":"Bundle","total":2,"entry":[{"fullUrl":"http://x/Observation/1","resource":{"resourceType":"Observation","status":"final","valueQuantity":{"value":-0.25,"unit":"g/cm\u00b2"},"subject":{"reference":"Patient/p1"},"note":[{"text":"caf\u00e9 \"x\" \\"}],"flag":[true,false,null]}}]}"#;
        let mut accepted = 0;
        let replacements = [
            b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'e', b'u', b' ', b'x', 0x01,
            0xff,
        ];
        let mut check = |body: &[u8]| {
            if let Scan::Clean(_) = scan(body, true) {
                accepted += 1;
                assert!(
                    serde_json::from_slice::<serde_json::Value>(body).is_ok(),
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
        };
        for end in 0..=doc.len() {
            check(&doc[..end]);
        }
        for at in 0..doc.len() {
            for r in replacements {
                let mut body = doc.to_vec();
                body[at] = r;
                check(&body);
            }
        }
        assert!(
            accepted > 100,
            "the edits exercise the accepting path ({accepted})"
        );
    }

    /// A body whose one string value is `text`, as bytes.
    fn with_text(text: &[u8]) -> Vec<u8> {
        let mut body = br#"{"resourceType":"Observation","note":""#.to_vec();
        body.extend_from_slice(text);
        body.extend_from_slice(br#""}"#);
        body
    }

    #[test]
    fn a_raw_control_character_anywhere_in_a_long_string_goes_to_the_parse() {
        for len in [1, 15, 16, 17, 40, 100] {
            let plain = vec![b'a'; len];
            assert!(matches!(scan(&with_text(&plain), true), Scan::Clean(_)));
            for at in 0..len {
                for control in [0x00, b'\n', b'\t', 0x1f] {
                    let mut text = plain.clone();
                    text[at] = control;
                    let body = with_text(&text);
                    assert_eq!(scan(&body, true), Scan::Parse, "len {len} at {at}");
                    assert_eq!(scan(&body, false), Scan::Parse, "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn invalid_utf8_anywhere_in_a_long_string_goes_to_the_parse() {
        for len in [4, 16, 33, 100] {
            for at in 0..len {
                let mut text = vec![b'a'; len];
                text.splice(at..at, "é".bytes());
                assert!(matches!(scan(&with_text(&text), true), Scan::Clean(_)));
                for bad in [&[0xC3, b'a'][..], &[0x80], &[0xED, 0xA0, 0x80], &[0xFF]] {
                    let mut text = vec![b'a'; len];
                    text.splice(at..at, bad.iter().copied());
                    assert_eq!(
                        scan(&with_text(&text), true),
                        Scan::Parse,
                        "len {len} at {at}"
                    );
                }
            }
        }
    }
}
