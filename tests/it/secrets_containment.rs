//! Secrets: shown as source and fingerprint, never as values.

use crate::harness::Agentry;

const CANARY: &str = "sk-canary-config-check-9a8b7c6d5e";

#[tokio::test(flavor = "multi_thread")]
async fn config_check_shows_source_and_fingerprint_never_the_value() {
    let agentry = Agentry::new();
    let key = agentry.file("keys/openai", &format!("{CANARY}\n"));
    let agentry = agentry.env("OPENAI_API_KEY_FILE", key.display().to_string()).env("RUST_LOG", "trace");
    let run = agentry.run(&["config", "check"]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("openai_api_key = sha256:"), "{}", run.stdout);
    assert!(run.stdout.contains("$OPENAI_API_KEY_FILE"), "{}", run.stdout);
    assert!(run.stdout.contains("cloud: gpt-4o-mini"), "the route: {}", run.stdout);
    assert!(!run.output().contains(CANARY) && !run.output().contains(&CANARY[8..20]), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_fails_on_a_broken_secret_and_names_the_path() {
    let agentry = Agentry::new();
    std::fs::create_dir_all(agentry.dir().join("secrets/openai_api_key"))
        .expect("a directory where the file should be");
    let run = agentry.run(&["config", "check"]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("openai_api_key") && run.stderr.contains("is a directory"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_in_the_config_file_is_refused() {
    let agentry = Agentry::new();
    let path = agentry.file("c.toml", &format!("[model.cloud]\napi_key_secret = \"{CANARY}\"\n"));
    let run = agentry.run(&["config", "check", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("secret"), "{}", run.stderr);
    assert!(!run.output().contains(CANARY));
}
