#![allow(clippy::unwrap_used)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use spki::der::pem::{LineEnding, encode_string};

use super::cosign::Payload;
use super::*;

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn ecdsa() -> SigningKey {
    let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
        .unwrap();
    SigningKey::from_pem(&encode_string("PRIVATE KEY", LineEnding::LF, der.as_ref()).unwrap())
        .unwrap()
}

fn ed25519() -> SigningKey {
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    SigningKey::from_pem(&encode_string("PRIVATE KEY", LineEnding::LF, der.as_ref()).unwrap())
        .unwrap()
}

fn verify(keys: &[&SigningKey], required: bool) -> Verify {
    Verify {
        required,
        keys: keys.iter().map(|k| k.public_key().to_pem()).collect(),
    }
}

fn signed(key: &SigningKey, digest: &str) -> (Vec<u8>, Vec<u8>) {
    let payload = serde_json::to_vec(&Payload::new("127.0.0.1:5000/a", digest)).unwrap();
    let signature = key.sign(&payload).unwrap();
    (payload, signature)
}

#[test]
fn each_algorithm_signs_and_verifies_and_nothing_else_passes() {
    for (key, other) in [(ecdsa(), ed25519()), (ed25519(), ecdsa())] {
        let policy = Policy::new(Some(&verify(&[&key], true)), None).unwrap();
        let (payload, signature) = signed(&key, DIGEST);
        let passed = policy.check(DIGEST, &payload, &signature).unwrap();
        assert_eq!(passed.fingerprint(), key.public_key().fingerprint());
        // Another digest, signed by the right key.
        let err = policy.check(OTHER, &payload, &signature).unwrap_err();
        assert!(err.contains("over another digest"), "{err}");
        // Another key.
        let (payload, signature) = signed(&other, DIGEST);
        let err = policy.check(DIGEST, &payload, &signature).unwrap_err();
        assert!(
            err.contains("does not verify with any trusted key"),
            "{err}"
        );
        // A payload changed after signing.
        let (payload, signature) = signed(&key, DIGEST);
        let tampered = String::from_utf8(payload).unwrap().replace("1111", "2222");
        let err = policy
            .check(OTHER, tampered.as_bytes(), &signature)
            .unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
    }
}

#[test]
fn a_grant_narrows_the_node_s_keys_and_never_widens_them() {
    let (a, b, c) = (ecdsa(), ed25519(), ecdsa());
    let node = verify(&[&a, &b], true);
    let both = Policy::new(Some(&node), Some(&verify(&[&b, &c], false))).unwrap();
    let keys: Vec<_> = both.keys().iter().map(|k| k.fingerprint()).collect();
    assert_eq!(keys, [b.public_key().fingerprint()]);
    // No key in common: required, and nothing can pass.
    let none = Policy::new(Some(&node), Some(&verify(&[&c], false))).unwrap();
    assert!(none.required());
    assert!(
        none.unsatisfiable()
            .unwrap()
            .contains("among the node policy")
    );
    // Keys in a grant alone (no node verify section) require a signature
    // by them: the action's own opt-in.
    let grant_only = Policy::new(None, Some(&verify(&[&c], false))).unwrap();
    assert!(grant_only.required());
    assert_eq!(grant_only.keys().len(), 1);
    // A node requiring signatures without keys refuses everything, and a
    // grant cannot bring its own keys then (the review's high finding).
    let required = Verify {
        required: true,
        keys: vec![],
    };
    let empty = Policy::new(Some(&required), None).unwrap();
    assert!(empty.unsatisfiable().is_some());
    let own = Policy::new(Some(&required), Some(&verify(&[&c], false))).unwrap();
    assert!(own.keys().is_empty());
    assert!(own.unsatisfiable().unwrap().contains("cannot add keys"));
    // Keys in the node policy require a signature, `required` or not.
    assert!(
        Policy::new(Some(&verify(&[&a], false)), None)
            .unwrap()
            .required()
    );
    // Nothing listed, nothing required: nothing checked.
    assert!(!Policy::new(None, None).unwrap().required());
    assert!(
        !Policy::new(Some(&Verify::default()), None)
            .unwrap()
            .required()
    );
}

#[test]
fn bad_keys_are_named() {
    let bad = Verify {
        required: true,
        keys: vec!["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()],
    };
    let err = Policy::new(Some(&bad), None).unwrap_err();
    assert!(err.starts_with("policy verify.keys[0]:"), "{err}");
    let private = encode_string("PRIVATE KEY", LineEnding::LF, b"x").unwrap();
    let err = PublicKey::from_pem(&private).unwrap_err();
    assert!(err.contains("not a \"PUBLIC KEY\""), "{err}");
    let err = SigningKey::from_pem(&ecdsa().public_key().to_pem())
        .err()
        .unwrap();
    assert!(err.contains("PKCS#8"), "{err}");
}

#[test]
fn a_signature_manifest_round_trips() {
    let key = ecdsa();
    let (payload, signature) = signed(&key, DIGEST);
    let (manifest, _config) = cosign::manifest(None, &payload, &signature, key.public_key())
        .unwrap()
        .unwrap();
    let layers = cosign::layers(&manifest).unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].digest, crate::artifact::sha256(&payload));
    assert_eq!(layers[0].signature.as_deref(), Some(&signature[..]));
    // The same key again changes nothing, also with ECDSA's new bytes (the
    // re-review's finding: each re-sign added a layer until 32).
    let again = key.sign(&payload).unwrap();
    assert_ne!(again, signature);
    for sig in [&signature, &again] {
        let made = cosign::manifest(Some(&manifest), &payload, sig, key.public_key()).unwrap();
        assert!(made.is_none());
    }
    // A second key's signature is added beside the first.
    let other = ed25519();
    let (other_payload, other_signature) = signed(&other, DIGEST);
    let (both, _) = cosign::manifest(
        Some(&manifest),
        &other_payload,
        &other_signature,
        other.public_key(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(cosign::layers(&both).unwrap().len(), 2);
    assert!(cosign::layers(b"{").is_err());
    assert_eq!(
        cosign::signature_tag(DIGEST).unwrap(),
        format!("sha256-{}.sig", &DIGEST[7..])
    );
}
