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
