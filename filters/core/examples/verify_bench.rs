//! Token verification for the benchmark.
//!
//! `verify_bench prepare DIR`: makes an RSA 2048, a P-256 and an Ed25519 key, writes their
//! public JWKS (`jwks.json`), one long-lived token per algorithm (`token-RS256`, …) and
//! clinician tokens with 4, 16 and 64 scopes (`token-scopes-N`, for the whole-chain bench).
//! `verify_bench verify DIR ALG N`: verifies that token N times (no cache), for callgrind; run
//! with N = 0 and N > 0, the difference over N is one first-sight verification.

use chrono::DateTime;
use fhirgate_core::smart::token::{parse_jwks, Issuer, TokenVerifier, SUPPORTED_ALGORITHMS};
use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, Claims, Header};
use serde_json::{json, Value};
use std::hint::black_box;
use std::path::Path;
use std::process::ExitCode;

pub const ISSUER: &str = "https://bench.fhirgate.invalid";
pub const AUDIENCE: &str = "bench";
/// Resource types for scopes that grant none of the bench's requests.
const SUPPORTED_FILLER_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BodyStructure",
    "CarePlan",
    "CareTeam",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Contract",
    "Coverage",
    "DetectedIssue",
    "Device",
    "DeviceRequest",
    "DiagnosticReport",
    "DocumentReference",
    "EpisodeOfCare",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "Group",
    "ImagingStudy",
    "Immunization",
    "Invoice",
    "List",
    "Location",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "MolecularSequence",
    "NutritionOrder",
    "Organization",
    "Person",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "Schedule",
    "ServiceRequest",
    "Specimen",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "VisionPrescription",
];

fn prepare(dir: &Path) -> Result<(), String> {
    let mut rng = rand_core::OsRng;
    let rsa = RsaPrivateKey::new(&mut rng, 2048).map_err(|e| e.to_string())?;
    let ec = p256::ecdsa::SigningKey::random(&mut rng);
    let ed = ed25519_compact::KeyPair::generate();
    let with_kid = |jwk: JsonWebKey<'_>, kid: &str| -> Result<Value, String> {
        let mut v = serde_json::to_value(jwk).map_err(|e| e.to_string())?;
        v["kid"] = json!(kid);
        Ok(v)
    };
    let jwks = json!({"keys": [
        with_kid(JsonWebKey::from(&rsa.to_public_key()), "rsa")?,
        with_kid(JsonWebKey::from(ec.verifying_key()), "ec")?,
        with_kid(JsonWebKey::from(&ed.pk), "ed")?,
    ]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).map_err(|e| e.to_string())?;
    let custom =
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-client", "scope": "system/*.rs"});
    let mut claims = Claims::new(custom.as_object().cloned().unwrap_or_default());
    claims.expiration = DateTime::from_timestamp(4_102_444_800, 0); // 2100
    let tokens = [
        (
            "RS256",
            Rsa::rs256().token(&Header::empty().with_key_id("rsa"), &claims, &rsa),
        ),
        (
            "ES256",
            Es256.token(&Header::empty().with_key_id("ec"), &claims, &ec),
        ),
        (
            "EdDSA",
            Ed25519.token(&Header::empty().with_key_id("ed"), &claims, &ed.sk),
        ),
    ];
    for (alg, token) in tokens {
        std::fs::write(
            dir.join(format!("token-{alg}")),
            token.map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
    }
    // For the whole-chain bench: a clinician's token with N granular scopes, the ones that
    // grant the bench's requests last (the worst case for a scope matcher that scans).
    let fillers = SUPPORTED_FILLER_TYPES.iter().map(|t| format!("user/{t}.r"));
    for n in [4usize, 16, 64] {
        let granting = [
            "user/Patient.rs",
            "user/Observation.rs",
            "user/Condition.rs",
            "user/Encounter.rs",
        ];
        let scope: Vec<String> = fillers
            .clone()
            .take(n - granting.len())
            .chain(granting.iter().map(|s| s.to_string()))
            .collect();
        let custom = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "dr-bench", "fhirUser": "Practitioner/bench", "scope": scope.join(" ")});
        let mut claims = Claims::new(custom.as_object().cloned().unwrap_or_default());
        claims.expiration = DateTime::from_timestamp(4_102_444_800, 0);
        let token = Rsa::rs256()
            .token(&Header::empty().with_key_id("rsa"), &claims, &rsa)
            .map_err(|e| e.to_string())?;
        std::fs::write(dir.join(format!("token-scopes-{n}")), token).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn verify(dir: &Path, alg: &str, n: u64) -> Result<u64, String> {
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(dir.join("jwks.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let token =
        std::fs::read_to_string(dir.join(format!("token-{alg}"))).map_err(|e| e.to_string())?;
    let verifier = TokenVerifier {
        issuers: vec![Issuer {
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            algorithms: SUPPORTED_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
            keys: parse_jwks(&jwks)?,
            clock_skew_seconds: 60,
            required_claims: vec![],
            patient_claim: "patient".into(),
            purpose_claim: "purpose_of_use".into(),
            source: None,
        }],
        max_token_bytes: 8192,
        revoked_jtis: vec![],
    };
    let mut ok = 0;
    for _ in 0..n {
        if verifier.verify(black_box(&token), 1_800_000_000).is_ok() {
            ok += 1;
        }
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "prepare", dir] => prepare(Path::new(dir)).map(|_| 0),
        [_, "verify", dir, alg, n] => n
            .parse()
            .map_err(|_| "N is not a number".to_string())
            .and_then(|n| verify(Path::new(dir), alg, n)),
        _ => Err("usage: verify_bench prepare DIR | verify DIR ALG N".into()),
    };
    match result {
        Ok(n) => {
            println!("{n}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
