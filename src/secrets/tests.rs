use super::*;
use std::collections::HashMap;

const CANARY: &str = "sk-canary-7f3a9c1e5b2d4f60";

fn spec() -> SecretSpec {
    SecretSpec { name: "openai_api_key".into(), placeholders: vec!["sk-insecure".into()] }
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    move |name| map.get(name).cloned()
}

#[test]
fn the_docker_secret_file_wins_and_is_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("openai_api_key"), format!("{CANARY}\n")).expect("write");
    let env = env_of(&[("OPENAI_API_KEY", "sk-from-env")]);
    let credential = load(&spec(), dir.path(), &env).expect("ok").expect("found");
    assert_eq!(credential.expose(), CANARY);
    assert_eq!(credential.source(), &SecretSource::SecretFile(dir.path().join("openai_api_key")));
}

#[test]
fn the_file_variable_comes_next_then_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("key.txt");
    std::fs::write(&file, CANARY).expect("write");
    let file_str = file.display().to_string();
    let env = env_of(&[("OPENAI_API_KEY_FILE", &file_str), ("OPENAI_API_KEY", "sk-from-env")]);
    let credential = load(&spec(), Path::new("/nonexistent"), &env).expect("ok").expect("found");
    assert_eq!(credential.expose(), CANARY);

    let env = env_of(&[("OPENAI_API_KEY", "sk-from-env\r\n")]);
    let credential = load(&spec(), Path::new("/nonexistent"), &env).expect("ok").expect("found");
    assert_eq!(credential.expose(), "sk-from-env");
    assert_eq!(credential.source(), &SecretSource::Environment("OPENAI_API_KEY".into()));
}

#[test]
fn placeholders_and_absence_mean_no_key() {
    let env = env_of(&[("OPENAI_API_KEY", "sk-insecure")]);
    assert!(load(&spec(), Path::new("/nonexistent"), &env).expect("ok").is_none());
    assert!(load(&spec(), Path::new("/nonexistent"), &env_of(&[])).expect("ok").is_none());
}

#[test]
fn bad_files_are_named_without_their_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("openai_api_key")).expect("mkdir");
    let error = load(&spec(), dir.path(), &env_of(&[])).expect_err("directory");
    assert!(error.to_string().contains("is a directory"), "{error}");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("openai_api_key"), "\n").expect("write");
    let error = load(&spec(), dir.path(), &env_of(&[])).expect_err("empty");
    assert!(error.to_string().contains("is empty"), "{error}");

    let big = format!("{CANARY}{}", "x".repeat(MAX_SECRET_BYTES as usize));
    std::fs::write(dir.path().join("openai_api_key"), &big).expect("write");
    let error = load(&spec(), dir.path(), &env_of(&[])).expect_err("too big");
    assert!(error.to_string().contains("larger than"), "{error}");
    assert!(!format!("{error} {error:?}").contains(CANARY));

    let env = env_of(&[("OPENAI_API_KEY_FILE", "/nonexistent/key")]);
    let error = load(&spec(), Path::new("/nonexistent"), &env).expect_err("missing file");
    assert!(error.to_string().contains("OPENAI_API_KEY_FILE"), "{error}");
}

#[test]
fn symlinked_secrets_are_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("..2026_11_28");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("openai_api_key"), CANARY).expect("write");
    std::os::unix::fs::symlink(&data, dir.path().join("..data")).expect("link");
    std::os::unix::fs::symlink("..data/openai_api_key", dir.path().join("openai_api_key")).expect("link");
    let credential = load(&spec(), dir.path(), &env_of(&[])).expect("ok").expect("found");
    assert_eq!(credential.expose(), CANARY);
}

#[test]
fn debug_and_display_show_the_fingerprint_never_the_value() {
    let credential = Credential::new(
        "openai_api_key",
        SecretString::from(CANARY),
        SecretSource::Environment("OPENAI_API_KEY".into()),
    );
    let shown = format!("{credential:?} {} {}", credential.fingerprint(), credential.source());
    assert!(!shown.contains(CANARY), "{shown}");
    assert!(!shown.contains(&CANARY[3..12]), "{shown}");
    assert!(shown.contains(&credential.fingerprint().to_string()));
    assert_eq!(credential.fingerprint().to_string().len(), "sha256:".len() + 8);
    assert_ne!(Fingerprint::of("a"), Fingerprint::of("b"));
}

#[test]
fn a_dangling_symlink_and_an_unreadable_file_have_their_own_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(dir.path().join("..data/gone"), dir.path().join("openai_api_key")).expect("link");
    let error = load(&spec(), dir.path(), &env_of(&[])).expect_err("dangling");
    assert!(error.to_string().contains("symbolic link to a file that does not exist"), "{error}");

    // /proc/self/mem exists, is small, and cannot be read (by root either): it is refused, by
    // where it is, before any read.
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/proc/self/mem", dir.path().join("openai_api_key")).expect("link");
    let error = load(&spec(), dir.path(), &env_of(&[])).expect_err("unreadable");
    assert!(error.to_string().contains("under /proc"), "{error}");
    assert!(error.to_string().contains("openai_api_key"), "{error}");
}

#[test]
fn a_key_file_that_leads_into_proc_sys_or_dev_is_refused_unread() {
    // A link to /proc/self/environ would send the whole environment as the key.
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("key");
    std::os::unix::fs::symlink("/proc/self/environ", &link).expect("symlink");
    let env = env_of(&[("OPENAI_API_KEY_FILE", link.to_str().expect("utf-8"))]);
    let error = load(&spec(), Path::new("/nonexistent"), &env).expect_err("a /proc file is no secret file");
    let text = error.to_string();
    assert!(text.contains(&link.display().to_string()) && text.contains("under /proc"), "{text}");
    assert!(!text.contains("PATH="), "nothing of the file is shown: {text}");

    // The Docker secret file itself as a link to a device.
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("openai_api_key")).expect("symlink");
    let error = load(&spec(), dir.path(), &env_of(&[])).expect_err("a device is no secret file");
    assert!(error.to_string().contains("/dev/zero"), "{error}");
}

#[test]
fn a_key_no_header_can_carry_is_named_by_its_source() {
    let env = env_of(&[("OPENAI_API_KEY", "sk-abc\ndef")]);
    let credential = load(&spec(), Path::new("/nonexistent"), &env).expect("ok").expect("found");
    let error = header_safe(&credential).expect_err("a line break inside the key");
    let text = error.to_string();
    assert!(text.contains("$OPENAI_API_KEY") && text.contains(&credential.fingerprint().to_string()), "{text}");
    assert!(!text.contains("sk-abc"), "{text}");
    let fine = load(&spec(), Path::new("/nonexistent"), &env_of(&[("OPENAI_API_KEY", CANARY)])).expect("ok");
    assert!(header_safe(&fine.expect("found")).is_ok());
}
