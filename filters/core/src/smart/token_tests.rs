//! Token verification and the token-attack suite, with tokens minted here.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_compact::alg::{Hs256, Hs256Key, RsaPrivateKey};
use jwt_compact::Header;
use rand_core::OsRng;
use serde_json::json;
use std::sync::OnceLock;

const NOW: i64 = 1_790_000_000;
const ISS: &str = "https://issuer.example";
const AUD: &str = "https://gateway.example/fhir/r4";

struct Keys {
    rsa: RsaPrivateKey,
    other_rsa: RsaPrivateKey,
    ec: p256::ecdsa::SigningKey,
    ed: (ed25519_compact::SecretKey, ed25519_compact::PublicKey),
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ed = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
        Keys {
            rsa: RsaPrivateKey::new(&mut OsRng, 2048).unwrap(),
            other_rsa: RsaPrivateKey::new(&mut OsRng, 2048).unwrap(),
            ec: p256::ecdsa::SigningKey::random(&mut OsRng),
            ed: (ed.sk, ed.pk),
        }
    })
}

fn jwk(value: Value, kid: &str) -> Value {
    let mut v = value;
    v["kid"] = json!(kid);
    v
}

fn jwks() -> Value {
    let k = keys();
    let rsa_pub = k.rsa.to_public_key();
    json!({"keys": [
        jwk(serde_json::to_value(JsonWebKey::from(&rsa_pub)).unwrap(), "rsa-1"),
        jwk(serde_json::to_value(JsonWebKey::from(k.ec.verifying_key())).unwrap(), "ec-1"),
        jwk(serde_json::to_value(JsonWebKey::from(&k.ed.1)).unwrap(), "ed-1"),
    ]})
}

fn verifier() -> TokenVerifier {
    TokenVerifier {
        issuers: vec![Issuer {
            issuer: ISS.into(),
            audiences: vec![AUD.into()],
            algorithms: SUPPORTED_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
            keys: parse_jwks(&jwks()).unwrap(),
            clock_skew_seconds: 60,
            required_claims: vec!["sub".into()],
            patient_claim: "patient".into(),
            purpose_claim: "purpose_of_use".into(),
            source: None,
        }],
        max_token_bytes: 8192,
        revoked_jtis: vec!["revoked-1".into()],
    }
}

fn claims(extra: Value) -> Claims<Map<String, Value>> {
    let mut custom = json!({"iss": ISS, "aud": AUD, "sub": "user-1", "client_id": "app-1",
                            "scope": "launch/patient patient/Observation.rs", "patient": "123", "jti": "t-1"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            custom.as_object_mut().unwrap().remove(k);
        } else {
            custom[k] = v.clone();
        }
    }
    let mut c = Claims::new(custom.as_object().unwrap().clone());
    c.expiration = DateTime::from_timestamp(NOW + 300, 0);
    c
}

fn rs256(kid: &str, c: &Claims<Map<String, Value>>) -> String {
    Rsa::rs256()
        .token(&Header::empty().with_key_id(kid), c, &keys().rsa)
        .unwrap()
}

fn encode(header: Value, payload: Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[test]
fn accepts_valid_tokens_of_every_supported_algorithm() {
    let k = keys();
    let c = claims(json!({}));
    let tokens = [
        rs256("rsa-1", &c),
        Rsa::rs384()
            .token(&Header::empty().with_key_id("rsa-1"), &c, &k.rsa)
            .unwrap(),
        Rsa::rs512()
            .token(&Header::empty().with_key_id("rsa-1"), &c, &k.rsa)
            .unwrap(),
        Rsa::ps256()
            .token(&Header::empty().with_key_id("rsa-1"), &c, &k.rsa)
            .unwrap(),
        Es256
            .token(&Header::empty().with_key_id("ec-1"), &c, &k.ec)
            .unwrap(),
        Ed25519
            .token(&Header::empty().with_key_id("ed-1"), &c, &k.ed.0)
            .unwrap(),
    ];
    for t in tokens {
        let v = verifier()
            .verify(&t, NOW)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(v.subject.as_deref(), Some("user-1"));
        assert_eq!(v.client_id.as_deref(), Some("app-1"));
        assert_eq!(v.patient.as_deref(), Some("123"));
        assert_eq!(v.scopes, "launch/patient patient/Observation.rs");
        assert_eq!(v.expires_at, NOW + 300);
    }
}

#[test]
fn the_token_attack_suite_is_refused_with_401() {
    let k = keys();
    let c = claims(json!({}));
    let payload = serde_json::to_value(&c).unwrap();
    let good = rs256("rsa-1", &c);
    let (head, rest) = good.split_once('.').unwrap();
    let (body, sig) = rest.split_once('.').unwrap();
    let rsa_pub_der = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_der(&k.rsa.to_public_key())
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
    let mut tampered_claims = payload.clone();
    tampered_claims["patient"] = json!("456");

    let cases: Vec<(&str, String, TokenError)> = vec![
        (
            "alg none",
            encode(json!({"alg": "none"}), payload.clone(), b""),
            TokenError::AlgorithmNotAllowed,
        ),
        (
            "alg None",
            encode(json!({"alg": "None", "kid": "rsa-1"}), payload.clone(), b""),
            TokenError::AlgorithmNotAllowed,
        ),
        (
            "HS256 with the public key as secret",
            Hs256
                .token(
                    &Header::empty().with_key_id("rsa-1"),
                    &c,
                    &Hs256Key::new(&rsa_pub_der),
                )
                .unwrap(),
            TokenError::AlgorithmNotAllowed,
        ),
        ("unknown kid", rs256("rsa-2", &c), TokenError::UnknownKey),
        (
            "kid path traversal",
            rs256("../../../../etc/passwd", &c),
            TokenError::UnknownKey,
        ),
        (
            "kid sql",
            rs256("' OR '1'='1' --", &c),
            TokenError::UnknownKey,
        ),
        (
            "kid huge",
            rs256(&"k".repeat(300), &c),
            TokenError::UnknownKey,
        ),
        (
            "kid of another key type",
            rs256("ec-1", &c),
            TokenError::UnknownKey,
        ),
        (
            "signed by another key",
            Rsa::rs256()
                .token(&Header::empty().with_key_id("rsa-1"), &c, &k.other_rsa)
                .unwrap(),
            TokenError::BadSignature,
        ),
        (
            "payload swapped",
            format!(
                "{head}.{}.{sig}",
                URL_SAFE_NO_PAD.encode(tampered_claims.to_string())
            ),
            TokenError::BadSignature,
        ),
        (
            "signature stripped",
            format!("{head}.{body}."),
            TokenError::BadSignature,
        ),
        (
            "expired",
            rs256("rsa-1", &{
                let mut x = c.clone();
                x.expiration = DateTime::from_timestamp(NOW - 61, 0);
                x
            }),
            TokenError::Expired,
        ),
        (
            "no expiry",
            rs256("rsa-1", &{
                let mut x = c.clone();
                x.expiration = None;
                x
            }),
            TokenError::MissingExpiry,
        ),
        (
            "nbf in the future",
            rs256("rsa-1", &{
                let mut x = c.clone();
                x.not_before = DateTime::from_timestamp(NOW + 120, 0);
                x
            }),
            TokenError::NotYetValid,
        ),
        (
            "wrong iss",
            rs256("rsa-1", &claims(json!({"iss": "https://evil.example"}))),
            TokenError::UnknownIssuer,
        ),
        (
            "no iss",
            rs256("rsa-1", &claims(json!({"iss": null}))),
            TokenError::UnknownIssuer,
        ),
        (
            "wrong aud",
            rs256("rsa-1", &claims(json!({"aud": "https://other.example"}))),
            TokenError::WrongAudience,
        ),
        (
            "no aud",
            rs256("rsa-1", &claims(json!({"aud": null}))),
            TokenError::WrongAudience,
        ),
        (
            "missing sub",
            rs256("rsa-1", &claims(json!({"sub": null}))),
            TokenError::MissingClaim,
        ),
        (
            "revoked jti",
            rs256("rsa-1", &claims(json!({"jti": "revoked-1"}))),
            TokenError::Revoked,
        ),
        (
            "oversize",
            rs256("rsa-1", &claims(json!({"pad": "x".repeat(9000)}))),
            TokenError::TooLarge,
        ),
        (
            "bad base64",
            "eyJhbGciOiJSUzI1NiJ9.***.abc".to_string(),
            TokenError::Malformed,
        ),
        (
            "two segments",
            format!("{head}.{body}"),
            TokenError::Malformed,
        ),
        (
            "not a jwt",
            "opaque-token-value".to_string(),
            TokenError::Malformed,
        ),
        ("empty", String::new(), TokenError::Malformed),
        (
            "header not json",
            format!("{}.{body}.{sig}", URL_SAFE_NO_PAD.encode("not json")),
            TokenError::Malformed,
        ),
        (
            "payload not json",
            format!("{head}.{}.{sig}", URL_SAFE_NO_PAD.encode("[1,2")),
            TokenError::Malformed,
        ),
    ];
    for (name, token, expected) in cases {
        let err = verifier().verify(&token, NOW).err();
        assert_eq!(err, Some(expected), "{name}");
        let rejection = expected.rejection();
        assert_eq!(rejection.status, 401, "{name}");
        let challenge = &rejection.headers[0].1;
        assert!(
            challenge.starts_with(r#"Bearer realm="fhir", error="invalid_token""#),
            "{name}: {challenge}"
        );
        assert!(
            !challenge.contains(&token[..token.len().min(20)]) || token.len() < 20,
            "{name}: the token is never echoed"
        );
    }
}

#[test]
fn clock_skew_is_honoured_both_ways() {
    let mut c = claims(json!({}));
    c.expiration = DateTime::from_timestamp(NOW - 30, 0);
    assert!(
        verifier().verify(&rs256("rsa-1", &c), NOW).is_ok(),
        "expired 30 s ago, within 60 s of skew"
    );
    c.expiration = DateTime::from_timestamp(NOW + 300, 0);
    c.not_before = DateTime::from_timestamp(NOW + 30, 0);
    assert!(
        verifier().verify(&rs256("rsa-1", &c), NOW).is_ok(),
        "valid in 30 s, within skew"
    );
}

#[test]
fn accepts_an_audience_list_naming_this_server() {
    let t = rs256(
        "rsa-1",
        &claims(json!({"aud": ["https://other.example", AUD]})),
    );
    assert!(verifier().verify(&t, NOW).is_ok());
}

#[test]
fn refuses_algorithms_the_issuer_does_not_allow() {
    let mut v = verifier();
    v.issuers[0].algorithms = vec!["RS256".into()];
    let t = Es256
        .token(
            &Header::empty().with_key_id("ec-1"),
            &claims(json!({})),
            &keys().ec,
        )
        .unwrap();
    assert_eq!(v.verify(&t, NOW), Err(TokenError::AlgorithmNotAllowed));
}

#[test]
fn uses_the_only_fitting_key_without_a_kid_but_never_guesses() {
    let c = claims(json!({}));
    let t = Rsa::rs256()
        .token(&Header::empty(), &c, &keys().rsa)
        .unwrap();
    assert!(verifier().verify(&t, NOW).is_ok(), "one RSA key in the set");
    let mut v = verifier();
    let extra = v.issuers[0].keys[0].clone();
    v.issuers[0].keys.push(Key {
        kid: Some("rsa-9".into()),
        ..extra
    });
    assert_eq!(
        v.verify(&t, NOW),
        Err(TokenError::UnknownKey),
        "two RSA keys: no kid, no guess"
    );
}

#[test]
fn reads_the_bearer_token_from_the_authorization_header() {
    assert_eq!(bearer_token(Some("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
    assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
    assert_eq!(bearer_token(Some("BEARER   abc  ")), Ok("abc"));
    assert_eq!(bearer_token(None), Err(TokenError::Missing));
    assert_eq!(
        bearer_token(Some("Basic dXNlcjpwYXNz")),
        Err(TokenError::NotBearer)
    );
    assert_eq!(bearer_token(Some("Bearer")), Err(TokenError::NotBearer));
    assert_eq!(bearer_token(Some("Bearer a b")), Err(TokenError::Malformed));
    assert_eq!(
        TokenError::Missing.rejection().headers[0].1,
        r#"Bearer realm="fhir""#
    );
}

#[test]
fn refuses_jwks_that_hold_what_they_should_not() {
    let k = keys();
    let mut private = serde_json::to_value(JsonWebKey::from(&k.ed.0)).unwrap();
    private["kid"] = json!("x");
    let small = RsaPrivateKey::new(&mut OsRng, 1024)
        .unwrap()
        .to_public_key();
    let cases = [
        (json!({"keys": [private]}), "private key"),
        (
            json!({"keys": [serde_json::to_value(JsonWebKey::from(&small)).unwrap()]}),
            "1024 bits",
        ),
        (
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            "key type `oct`",
        ),
        (json!({"keys": [{"n": "AQAB"}]}), "`kty`"),
        (
            json!({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}),
            "keys[0]",
        ),
        (json!({"nokeys": []}), "`keys` array"),
    ];
    for (jwks, message) in cases {
        let err = parse_jwks(&jwks).unwrap_err();
        assert!(err.contains(message), "{err}");
    }
    let enc_only = json!({"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]});
    assert!(
        parse_jwks(&enc_only).unwrap().is_empty(),
        "encryption keys are skipped"
    );
}

#[test]
fn trusts_a_payload_forwarded_by_envoy_jwt_authn_but_checks_it() {
    let v = verifier();
    let payload = |claims: Value| URL_SAFE_NO_PAD.encode(claims.to_string());
    let good =
        json!({"iss": ISS, "sub": "u", "scope": "user/*.rs", "patient": "123", "exp": NOW + 300});
    let t = v
        .from_forwarded_payload(&payload(good.clone()), NOW)
        .unwrap();
    assert_eq!(
        (t.scopes.as_str(), t.patient.as_deref(), t.expires_at),
        ("user/*.rs", Some("123"), NOW + 300)
    );
    let padded = base64::engine::general_purpose::URL_SAFE.encode(good.to_string());
    assert!(
        v.from_forwarded_payload(&padded, NOW).is_ok(),
        "padding is tolerated"
    );
    let cases = [
        (
            payload(json!({"iss": "https://evil.example", "sub": "u", "exp": NOW + 300})),
            TokenError::UnknownIssuer,
        ),
        (
            payload(json!({"iss": ISS, "sub": "u"})),
            TokenError::MissingExpiry,
        ),
        (
            payload(json!({"iss": ISS, "sub": "u", "exp": NOW - 61})),
            TokenError::Expired,
        ),
        (
            payload(json!({"iss": ISS, "exp": NOW + 300})),
            TokenError::MissingClaim,
        ),
        (
            payload(json!({"iss": ISS, "sub": "u", "exp": NOW + 300, "jti": "revoked-1"})),
            TokenError::Revoked,
        ),
        ("%%%".to_string(), TokenError::Malformed),
        (URL_SAFE_NO_PAD.encode("[1,2]"), TokenError::Malformed),
    ];
    for (p, expected) in cases {
        assert_eq!(v.from_forwarded_payload(&p, NOW), Err(expected));
    }
}

/// CDS Hooks 2.0 client JWTs (issue 14, class 10).
mod cds_hooks {
    use super::*;

    const SERVICE: &str = "https://gateway.example/cds-services/patient-greeter";

    fn cds_claims(extra: Value) -> Claims<Map<String, Value>> {
        let mut c = claims(
            json!({"aud": SERVICE, "jti": "cds-1", "scope": null, "patient": null, "client_id": null}),
        );
        c.issued_at = DateTime::from_timestamp(NOW - 10, 0);
        c.expiration = DateTime::from_timestamp(NOW + 290, 0);
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.custom.remove(k);
            } else {
                c.custom.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn sign(header: Header, c: &Claims<Map<String, Value>>) -> String {
        Ed25519.token(&header, c, &keys().ed.0).unwrap()
    }

    fn ed(c: &Claims<Map<String, Value>>) -> String {
        sign(Header::empty().with_key_id("ed-1"), c)
    }

    fn issuers() -> Vec<String> {
        vec![ISS.to_string()]
    }

    #[test]
    fn accepts_a_jwt_for_the_service_it_calls() {
        let v = verifier()
            .verify_cds(&ed(&cds_claims(json!({}))), NOW, SERVICE, &issuers())
            .unwrap();
        assert_eq!(
            (v.issuer.as_str(), v.jti.as_str(), v.subject.as_deref()),
            (ISS, "cds-1", Some("user-1"))
        );
        assert_eq!((v.issued_at, v.expires_at), (NOW - 10, NOW + 290));
    }

    #[test]
    fn refuses_what_cds_hooks_does_not_allow() {
        let v = verifier();
        let cases: Vec<(&str, String, TokenError)> = vec![
            (
                "another service's audience",
                ed(&cds_claims(
                    json!({"aud": "https://gateway.example/cds-services/other"}),
                )),
                TokenError::WrongAudience,
            ),
            (
                "a FHIR access token's audience",
                ed(&cds_claims(json!({"aud": AUD}))),
                TokenError::WrongAudience,
            ),
            (
                "no jti",
                ed(&cds_claims(json!({"jti": null}))),
                TokenError::MissingClaim,
            ),
            (
                "an empty jti",
                ed(&cds_claims(json!({"jti": ""}))),
                TokenError::MissingClaim,
            ),
            (
                "expired",
                {
                    let mut c = cds_claims(json!({}));
                    c.expiration = DateTime::from_timestamp(NOW - 120, 0);
                    ed(&c)
                },
                TokenError::Expired,
            ),
            (
                "no iat",
                {
                    let mut c = cds_claims(json!({}));
                    c.issued_at = None;
                    ed(&c)
                },
                TokenError::MissingClaim,
            ),
            (
                "a jku naming keys elsewhere",
                sign(
                    Header::empty()
                        .with_key_id("ed-1")
                        .with_key_set_url("https://evil.example/jwks"),
                    &cds_claims(json!({})),
                ),
                TokenError::UnknownKey,
            ),
            (
                "an unknown issuer",
                ed(&cds_claims(json!({"iss": "https://other.example"}))),
                TokenError::UnknownIssuer,
            ),
        ];
        for (name, token, expected) in cases {
            assert_eq!(
                v.verify_cds(&token, NOW, SERVICE, &issuers()),
                Err(expected),
                "{name}"
            );
        }
        // A trusted issuer that is not a trusted CDS client.
        assert_eq!(
            v.verify_cds(
                &ed(&cds_claims(json!({}))),
                NOW,
                SERVICE,
                &["https://ehr.example".to_string()]
            ),
            Err(TokenError::UnknownIssuer)
        );
    }
}
