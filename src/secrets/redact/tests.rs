use std::sync::Mutex;

use secrecy::SecretString;

use super::*;
use crate::secrets::SecretSource;

fn credential(name: &str, value: &str) -> Credential {
    Credential::new(name, SecretString::from(value.to_owned()), SecretSource::Environment(name.to_uppercase()))
}

/// Values a test can change, as SecretKeeper's channels change on a rotation.
#[derive(Default)]
struct Values(Mutex<Vec<Credential>>);

impl SecretValues for Values {
    fn each(&self, visit: &mut dyn FnMut(&Credential)) {
        self.0.lock().expect("lock").iter().for_each(visit);
    }
}

fn redactor(values: &[(&str, &str)]) -> (Redactor, Arc<Values>) {
    let store = Arc::new(Values::default());
    store.0.lock().expect("lock").extend(values.iter().map(|(name, value)| credential(name, value)));
    (Redactor::new(store.clone()), store)
}

const TOKEN: &str = "gw-4f1c9a7e2b8d6053a1c4";

#[test]
fn a_loaded_value_is_replaced_by_the_secret_name_and_the_rest_stays() {
    let (redactor, _) = redactor(&[("mcp_gateway_auth_token", TOKEN)]);
    let text = format!("upstream refused the token {TOKEN} for tool search");
    assert_eq!(redactor.scrub(&text), "upstream refused the token [redacted mcp_gateway_auth_token] for tool search");
    assert_eq!(redactor.scrub("nothing secret here"), "nothing secret here");
}

#[test]
fn a_quoted_piece_of_a_value_is_replaced_too() {
    let (redactor, _) = redactor(&[("token", TOKEN)]);
    // A server that shows the key's middle, or its start cut at some length.
    for piece in [&TOKEN[3..19], &TOKEN[..MIN_PIECE], &TOKEN[TOKEN.len() - MIN_PIECE..]] {
        let scrubbed = redactor.scrub(&format!("key \"{piece}\" refused"));
        assert_eq!(scrubbed, "key \"[redacted token]\" refused", "{piece}");
    }
    // A shorter piece is not a leak worth wrecking the text for.
    let short = &TOKEN[..MIN_PIECE - 1];
    assert_eq!(redactor.scrub(short), short);
}

#[test]
fn short_values_are_replaced_whole_and_tiny_ones_not_at_all() {
    let (redactor, _) = redactor(&[("short", "p4ss-w0rd"), ("tiny", "x")]);
    assert_eq!(redactor.scrub("got p4ss-w0rd, p4ss-w0rd"), "got [redacted short], [redacted short]");
    assert_eq!(redactor.scrub("x marks the spot"), "x marks the spot");
}

#[test]
fn key_shapes_are_replaced_whatever_their_value() {
    let redactor = Redactor::default();
    assert_eq!(
        redactor.scrub("Incorrect API key provided: sk-proj-AbC123_xyz-987. See docs."),
        "Incorrect API key provided: [redacted key]. See docs."
    );
    assert_eq!(
        redactor.scrub("headers: {\"Authorization\": \"Bearer abc123def456\"}"),
        "headers: {\"Authorization\": \"Bearer [redacted]\"}"
    );
    assert_eq!(
        redactor.scrub("authorization: bearer\tZXlKaGJHY2lPaUpJVXpJMU5pSjk"),
        "authorization: bearer\t[redacted]"
    );
    // OpenAI's own masking, words that only look alike, and prose about tokens stay.
    for kept in [
        "Incorrect API key provided: sk-ab***********yz12.",
        "the task-skeleton failed",
        "sk-short",
        "Authorization must be a Bearer token",
        "expected a bearer authentication header",
    ] {
        assert_eq!(redactor.scrub(kept), kept);
    }
}

#[test]
fn the_values_are_read_at_each_scrub_and_the_request_credential_counts_too() {
    let (redactor, store) = redactor(&[("openai_api_key", "old-value-0123456789abcdef")]);
    let rotated = credential("openai_api_key", "new-value-fedcba9876543210");
    store.0.lock().expect("lock")[0] = rotated.clone();
    assert_eq!(redactor.scrub("new-value-fedcba9876543210"), "[redacted openai_api_key]");
    // A request still in flight with the old key: its credential is passed along.
    let old = credential("openai_api_key", "old-value-0123456789abcdef");
    assert_eq!(redactor.scrub_with("old-value-0123456789abcdef", Some(&old)), "[redacted openai_api_key]");
}

#[test]
fn overlapping_marks_and_multibyte_text_stay_well_formed() {
    let (redactor, _) = redactor(&[("a", "sk-überlong-secret-0123456789")]);
    let text = "é sk-überlong-secret-0123456789 → Bearer sk-überlong-secret-0123456789 ü";
    let scrubbed = redactor.scrub(text);
    assert!(!scrubbed.contains("secret-0123"), "{scrubbed}");
    assert!(scrubbed.starts_with("é [redacted a]") && scrubbed.ends_with(" ü"), "{scrubbed}");
}
