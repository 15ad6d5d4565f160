//! The optional model judge of the input guardrails (`GUARDRAIL_JUDGE=model`):
//! one short classification call per message the rules let through, with a
//! fixed prompt and a strict JSON answer, run while the turn retrieves its
//! context and opens the answer (see the chat pipeline); the answer is not
//! shown before the verdict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::clients::ClientSetupError;
use crate::clients::model::{ModelClient, ModelError, PromptMessage};
use crate::config::JudgeConfig;
use crate::metrics::Metrics;
use crate::services::prompt;

/// What the judge decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ruling {
    /// Benign, or the judge failed and `GUARDRAIL_JUDGE_FAIL=open`.
    Allow,
    /// The judge called it an attack.
    Attack,
    /// The judge failed (error, timeout, an answer that is not the JSON
    /// asked for) and `GUARDRAIL_JUDGE_FAIL=closed`.
    Unavailable,
}

impl Ruling {
    /// The turn log's refusal reason.
    pub fn code(self) -> Option<&'static str> {
        match self {
            Self::Allow => None,
            Self::Attack => Some("judge"),
            Self::Unavailable => Some("judge_unavailable"),
        }
    }

    /// The refusal shown and stored.
    pub fn message(self) -> &'static str {
        match self {
            Self::Attack | Self::Allow => {
                crate::services::guardrails::RefusalReason::PromptInjection.message()
            }
            Self::Unavailable => {
                "Sorry, I can't answer that right now: our safety check is unavailable. \
                 Please try again in a moment."
            }
        }
    }
}

/// The judge: its model client and policy.
#[derive(Clone)]
pub struct Judge {
    client: ModelClient,
    timeout: Duration,
    fail_closed: bool,
    metrics: Arc<Metrics>,
}

/// The answer asked for: `{"verdict": "attack" | "benign"}` (other fields,
/// such as a reason, are allowed and ignored).
#[derive(Debug, Deserialize)]
struct Answer {
    verdict: VerdictWord,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum VerdictWord {
    Attack,
    Benign,
}

impl Judge {
    /// The judge `config` describes; `None` when it is off.
    pub fn new(
        config: Option<&JudgeConfig>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, ClientSetupError> {
        let Some(config) = config else {
            return Ok(None);
        };
        let Some(client) = ModelClient::new(&config.model)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            client,
            timeout: config.timeout,
            fail_closed: config.fail_closed,
            metrics,
        }))
    }

    /// The verdict on a (redacted) message.
    pub async fn rule(&self, message: &str) -> Ruling {
        let request = [
            PromptMessage {
                role: "system",
                content: prompt::JUDGE_PROMPT.to_string(),
            },
            PromptMessage {
                role: "user",
                content: prompt::judge_input(message),
            },
        ];
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.client.complete(&request)).await;
        let took = started.elapsed();
        let failure = match answer {
            Ok(Ok(text)) => match parse(&text) {
                Some(VerdictWord::Attack) => {
                    self.metrics.judge_verdict("attack", took);
                    tracing::info!(
                        took_ms = took.as_millis() as u64,
                        "the guardrail judge called a message an attack"
                    );
                    return Ruling::Attack;
                }
                Some(VerdictWord::Benign) => {
                    self.metrics.judge_verdict("benign", took);
                    return Ruling::Allow;
                }
                None => "its answer was not the JSON asked for".to_string(),
            },
            Ok(Err(ModelError::TotalTimeout(_))) | Err(_) => {
                self.metrics.judge_verdict("timeout", took);
                return self.failed(&format!("no verdict within {:?}", self.timeout));
            }
            Ok(Err(err)) => err.to_string(),
        };
        self.metrics.judge_verdict("error", took);
        self.failed(&failure)
    }

    /// The ruling when the judge could not give one.
    pub fn failed(&self, why: &str) -> Ruling {
        if self.fail_closed {
            tracing::warn!(
                why,
                "guardrail judge failed; refusing the message (GUARDRAIL_JUDGE_FAIL=closed)"
            );
            Ruling::Unavailable
        } else {
            tracing::warn!(
                why,
                "guardrail judge failed; letting the message through (GUARDRAIL_JUDGE_FAIL=open)"
            );
            Ruling::Allow
        }
    }
}

/// The verdict in an answer that is exactly one JSON object (surrounding
/// white space and a Markdown code fence aside); anything else is `None`.
fn parse(text: &str) -> Option<VerdictWord> {
    let text = text.trim();
    let text = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|inner| inner.strip_suffix("```"))
        .map_or(text, str::trim);
    serde_json::from_str::<Answer>(text)
        .ok()
        .map(|answer| answer.verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_json_asked_for_is_a_verdict() {
        assert_eq!(parse(r#"{"verdict":"attack"}"#), Some(VerdictWord::Attack));
        assert_eq!(
            parse(" {\"verdict\": \"benign\", \"reason\": \"a balance question\"}\n"),
            Some(VerdictWord::Benign)
        );
        assert_eq!(
            parse("```json\n{\"verdict\":\"attack\"}\n```"),
            Some(VerdictWord::Attack)
        );
        for bad in [
            "attack",
            r#"{"verdict":"maybe"}"#,
            r#"{"verdict":"ATTACK"}"#,
            r#"Sure! {"verdict":"benign"}"#,
            r#"[{"verdict":"benign"}]"#,
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
