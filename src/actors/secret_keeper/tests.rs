//! SecretKeeper's redactor over a temporary secrets directory.

use ractor::Actor;

use super::*;

const TOKEN: &str = "mcp_gateway_auth_token";
/// No poll tick during the test: only a reload reads the secret again.
const NO_POLL: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn the_redactor_scrubs_the_values_published_now_and_follows_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(TOKEN), "gw-first-0123456789abcdef\n").expect("write the secret");
    let (handle, args, slot) =
        SecretKeeperHandle::new(vec![SecretSpec::new(TOKEN)], dir.path().into(), NO_POLL, Arc::new(|_| None));
    let redactor = handle.redactor();
    let (keeper, _) = Actor::spawn(None, SecretKeeper, args).await.expect("the keeper starts");
    slot.publish(keeper.clone());

    assert_eq!(
        redactor.scrub("token gw-first-0123456789abcdef refused"),
        "token [redacted mcp_gateway_auth_token] refused"
    );
    std::fs::write(dir.path().join(TOKEN), "gw-second-fedcba9876543210\n").expect("rotate the secret");
    assert_eq!(handle.reload(TOKEN).await.expect("the keeper answers"), Reloaded::Changed);
    // The redactor handed out before the rotation knows the new value.
    assert_eq!(redactor.scrub("gw-second-fedcba9876543210"), "[redacted mcp_gateway_auth_token]");
    keeper.stop(None);
}

/// Issue 12, case 6: a burst of rejections (twelve requests answered 401 at once) is one
/// re-read of the secret, not twelve serialised through the keeper.
#[tokio::test(start_paused = true)]
async fn a_burst_of_reloads_reads_the_secret_once() {
    const KEY: &str = "openai_api_key";
    let dir = tempfile::tempdir().expect("tempdir");
    let lookups = Arc::new(AtomicU64::new(0));
    let env: EnvLookup = Arc::new({
        let lookups = lookups.clone();
        move |name| {
            lookups.fetch_add(1, Ordering::SeqCst);
            (name == "OPENAI_API_KEY").then(|| "sk-from-env-0123456789abcdef".to_owned())
        }
    });
    let (handle, args, slot) = SecretKeeperHandle::new(vec![SecretSpec::new(KEY)], dir.path().into(), NO_POLL, env);
    let (keeper, _) = Actor::spawn(None, SecretKeeper, args).await.expect("the keeper starts");
    slot.publish(keeper.clone());

    let key = Fingerprint::of("sk-from-env-0123456789abcdef");
    let before = lookups.load(Ordering::SeqCst);
    handle.reload_rejected(KEY, key).await.expect("the keeper answers");
    let one_read = lookups.load(Ordering::SeqCst) - before;
    assert!(one_read > 0, "a reload reads the sources");
    tokio::time::advance(Duration::from_secs(2)).await;

    let before = lookups.load(Ordering::SeqCst);
    let burst = (0..12).map(|_| handle.reload_rejected(KEY, key));
    for outcome in futures::future::join_all(burst).await {
        assert_eq!(outcome.expect("the keeper answers"), Reloaded::Unchanged);
    }
    assert_eq!(lookups.load(Ordering::SeqCst) - before, one_read, "twelve reloads, one read");
    keeper.stop(None);
}
