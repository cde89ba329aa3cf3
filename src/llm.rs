//! The OpenAI Chat Completions wire format and an HTTP client for it (no actor here).
//!
//! [`wire`] holds the request and response types, [`client`] sends one chat request with
//! timeouts and retries, [`LlmError`] says what went wrong in terms of what to do next.
//! Both routes (cloud OpenAI, local Docker Model Runner) speak the same protocol; the
//! `ModelRouter` actor decides which [`client::Endpoint`] a request goes to.

pub mod client;
mod error;
pub mod wire;

pub use error::LlmError;

use url::Url;

/// Parses an OpenAI-compatible base URL so that `chat/completions` joins onto it.
///
/// Model Runner hands out several shapes (`…/engines/llama.cpp/v1`, `…/engines/v1/`,
/// `…/v1/`); all are base URLs, with or without the trailing slash.
pub fn base_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} must be an http:// or https:// URL"));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The chat completions URL under a base URL.
pub fn chat_completions_url(base: &Url) -> Url {
    // A base from `base_url` always ends in '/', so this join appends and never replaces.
    base.join("chat/completions").unwrap_or_else(|_| base.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_runner_url_shapes_all_join_without_doubled_slashes() {
        for (base, expected) in [
            (
                "http://model-runner.docker.internal/engines/llama.cpp/v1",
                "http://model-runner.docker.internal/engines/llama.cpp/v1/chat/completions",
            ),
            (
                "http://model-runner.docker.internal/engines/v1/",
                "http://model-runner.docker.internal/engines/v1/chat/completions",
            ),
            ("http://localhost:12434/v1/", "http://localhost:12434/v1/chat/completions"),
            ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/chat/completions"),
        ] {
            let url = base_url(base).expect(base);
            assert_eq!(chat_completions_url(&url).as_str(), expected);
        }
    }

    #[test]
    fn bad_base_urls_are_refused() {
        assert!(base_url("model-runner/v1").is_err());
        assert!(base_url("ftp://host/v1").is_err());
        assert!(base_url("").is_err());
    }
}
