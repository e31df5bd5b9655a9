//! Azure OpenAI: the same Chat Completions bodies on another host. The model is a deployment
//! named in the URL: `POST /openai/deployments/{deployment}/chat/completions?api-version=...`,
//! with the key in the `api-key` header.
//!
//! Reference: https://learn.microsoft.com/en-us/azure/ai-services/openai/reference

use crate::config::AzureSettings;

pub fn path(a: &AzureSettings, deployment: &str) -> String {
    format!("/openai/deployments/{}/chat/completions?api-version={}", super::percent_encode(deployment), a.api_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_path_carries_the_api_version() {
        let a = AzureSettings { api_version: "2024-10-21".into() };
        assert_eq!(path(&a, "gpt-4o"), "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21");
    }
}
