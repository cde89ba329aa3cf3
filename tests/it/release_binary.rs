//! What ships: the agentry binary carries the demo, never the test kit.

/// Strings only the test kit's behaviours and endpoints produce.
const TEST_KIT_ONLY: &[&str] = &[
    "/_agentry/",                                // the old stats/reset endpoints
    "accept-key-file",                           // the old hidden `serve` subcommand
    "script_exhausted",                          // Queue behaviour
    "scripted disconnect",                       // Reply::Disconnect
    "Rate limit reached for",                    // Reply::rate_limited
    "The server is overloaded or not ready yet", // Reply::overloaded
    "Missing required parameter",                // request validation
    "Incorrect API key provided",                // the 401 of a key check
];

#[test]
fn the_agentry_binary_holds_no_test_double() {
    let path = env!("CARGO_BIN_EXE_agentry");
    let bytes = std::fs::read(path).expect("the agentry binary is built for the tests");
    let found: Vec<&str> = TEST_KIT_ONLY
        .iter()
        .copied()
        .filter(|needle| bytes.windows(needle.len()).any(|window| window == needle.as_bytes()))
        .collect();
    assert!(found.is_empty(), "{path} contains test-kit strings: {found:?}");
    // The demo is in it, so the search above can find strings at all.
    let demo = b"agentry DEMO";
    assert!(bytes.windows(demo.len()).any(|window| window == demo), "the demo ships in {path}");
}
