//! The OpenAI Chat Completions wire format and an HTTP client for it (no actor here).
//!
//! [`wire`] holds the request and response types, [`client`] sends one chat request with
//! timeouts and retries, [`LlmError`] says what went wrong in terms of what to do next.
//! Both routes (cloud OpenAI, local Docker Model Runner) speak the same protocol; the
//! `ModelRouter` actor decides which [`client::Endpoint`] a request goes to.

pub mod client;
mod error;
pub mod rate_limit;
pub mod stream;
pub mod wire;

pub use error::{LlmError, MODEL_RUNNER_HOST, is_model_runner};

use url::Url;

/// An OpenAI-compatible base URL: `http(s)://host/...`, ending in '/' so that
/// `chat/completions` joins onto it.
///
/// Model Runner hands out several shapes (`…/engines/llama.cpp/v1`, `…/engines/v1/`,
/// `…/v1/`); all are base URLs, with or without the trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct BaseUrl(Url);

/// Why a text is not a base URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaseUrlError {
    /// Not a URL at all.
    #[error("{text:?} is not a URL: {source}")]
    NotAUrl {
        /// The text.
        text: String,
        /// What the parser said.
        #[source]
        source: url::ParseError,
    },
    /// Another scheme than http or https.
    #[error("{0:?} must be an http:// or https:// URL")]
    Scheme(String),
    /// No host to connect to.
    #[error("{0:?} has no host")]
    NoHost(String),
    /// A user name or password in the URL (shown without them).
    #[error(
        "{0:?} with a user name or password: a URL is printed in logs and errors, so the key goes in \
         its secret (api_key_secret), never in the URL"
    )]
    Credentials(String),
}

impl BaseUrl {
    /// Parses and normalises (no query or fragment, a trailing '/').
    pub fn parse(text: &str) -> Result<Self, BaseUrlError> {
        let mut url =
            Url::parse(text.trim()).map_err(|source| BaseUrlError::NotAUrl { text: text.to_owned(), source })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BaseUrlError::Scheme(text.to_owned()));
        }
        if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
            return Err(BaseUrlError::NoHost(text.to_owned()));
        }
        if let Some(shown) = crate::secrets::shown_without_credentials(&url) {
            return Err(BaseUrlError::Credentials(shown));
        }
        url.set_query(None);
        url.set_fragment(None);
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Self(url))
    }

    /// The URL.
    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl TryFrom<String> for BaseUrl {
    type Error = BaseUrlError;

    fn try_from(text: String) -> Result<Self, BaseUrlError> {
        Self::parse(&text)
    }
}

impl From<BaseUrl> for String {
    fn from(base: BaseUrl) -> Self {
        base.0.into()
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The chat completions URL under a base URL.
pub fn chat_completions_url(base: &Url) -> Url {
    // A base from `BaseUrl` always ends in '/', so this join appends and never replaces.
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
            let url = BaseUrl::parse(base).expect(base);
            assert_eq!(chat_completions_url(url.url()).as_str(), expected);
        }
    }

    #[test]
    fn bad_base_urls_are_refused() {
        assert!(matches!(BaseUrl::parse("model-runner/v1"), Err(BaseUrlError::NotAUrl { .. })));
        assert!(matches!(BaseUrl::parse("ftp://host/v1"), Err(BaseUrlError::Scheme(_))));
        assert!(BaseUrl::parse("").is_err());
    }
}
