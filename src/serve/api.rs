//! The OpenAI chat-completions API as `tenets serve` speaks it: the request as clients send it,
//! checked into a [`ChatTurn`] (every problem an [`ApiError`] in OpenAI's error shape, naming
//! the field), and the responses, chunks and model list as clients read them. A field with an
//! effect tenets does not implement (tools, several choices, stop sequences, log-probabilities)
//! is refused by name rather than ignored.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::Message;
use crate::engine::session::Sampling;

/// An error as OpenAI's API returns it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A request tenets cannot serve as sent (400).
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or incorrect API key: send `Authorization: Bearer KEY` with the \
                      key in the server's --api-key-env variable"
                .into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// The server could not serve a valid request (500, 503).
    pub fn server(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `POST /v1/chat/completions` as clients send it. Fields clients commonly send with no effect
/// here (`user`, `metadata`, zero penalties, `stream_options`) are read or ignored; the rest of
/// OpenAI's fields are refused in [`ChatRequest::check`].
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<WireMessage>>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub n: Option<u64>,
    pub response_format: Option<ResponseFormat>,
    pub stop: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub logprobs: Option<bool>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    pub content: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub schema: Option<Value>,
}

/// What the answer must look like.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON following the schema (given as the client sent it).
    JsonSchema(Value),
}

impl Format {
    /// How the decision log names it.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Format::Text => None,
            Format::JsonObject => Some("json_object"),
            Format::JsonSchema(_) => Some("json_schema"),
        }
    }
}

/// A checked request.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    pub messages: Vec<Message>,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub seed: Option<u32>,
    pub format: Format,
}

impl ChatRequest {
    /// Parses a request body; a body that is no JSON, or a field of the wrong type, is a 400
    /// that quotes serde's message (it names the field, line and column).
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid(
                None,
                format!("the request body is not a valid request: {e}"),
            )
        })
    }

    /// Checks the request against what this server serves: `model` is the served model's id
    /// and `defaults` the server's sampling.
    pub fn check(self, model: &str, defaults: Sampling) -> Result<ChatTurn, ApiError> {
        match self.model.as_deref() {
            None | Some("") => return Err(ApiError::invalid(Some("model"), "`model` is required")),
            Some(m) if m != model => {
                return Err(ApiError::invalid(
                    Some("model"),
                    format!("the model `{m}` does not exist: this server serves `{model}`"),
                )
                .with_status(StatusCode::NOT_FOUND)
                .with_code("model_not_found"))
            }
            Some(_) => {}
        }
        let refuse = |param: &str, what: &str| {
            Err(ApiError::invalid(
                Some(param),
                format!("`{param}`: {what} is not supported by tenets serve"),
            ))
        };
        if self.tools.is_some() || self.tool_choice.is_some() || self.functions.is_some() {
            return refuse("tools", "tool and function calling");
        }
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n", "more than one choice per request");
        }
        if self.stop.as_ref().is_some_and(|s| !s.is_null()) {
            return refuse("stop", "a stop sequence");
        }
        if self.logprobs == Some(true) {
            return refuse("logprobs", "returning log-probabilities");
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_null()) {
            return refuse("logit_bias", "a logit bias");
        }
        for (param, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return refuse(param, "a repetition penalty");
            }
        }
        let messages = check_messages(self.messages)?;
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(0) => {
                return Err(ApiError::invalid(
                    Some("max_tokens"),
                    "`max_tokens` must be at least 1",
                ))
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let temperature = self.temperature.unwrap_or(defaults.temperature);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("`temperature` must be between 0 and 2, found {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(defaults.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                Some("top_p"),
                format!("`top_p` must be in (0, 1], found {top_p}"),
            ));
        }
        let format = match self.response_format {
            None | Some(ResponseFormat::Text) => Format::Text,
            Some(ResponseFormat::JsonObject) => Format::JsonObject,
            Some(ResponseFormat::JsonSchema { json_schema }) => match json_schema.schema {
                Some(schema) if schema.is_object() => Format::JsonSchema(schema),
                _ => {
                    return Err(ApiError::invalid(
                        Some("response_format"),
                        format!(
                            "`response_format.json_schema.schema` must be a JSON schema object \
                             (schema `{}`)",
                            json_schema.name.unwrap_or_default()
                        ),
                    ))
                }
            },
        };
        Ok(ChatTurn {
            messages,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            max_tokens,
            sampling: Sampling { temperature, top_p },
            // Any integer a client sends is a seed; the low 32 bits are llama.cpp's.
            seed: self.seed.map(|s| (s as u64 & 0xFFFF_FFFF) as u32),
            format,
        })
    }
}

/// The conversation: system (or developer), user and assistant turns with text content,
/// ending in the user's turn (the one the input screen reads).
fn check_messages(messages: Option<Vec<WireMessage>>) -> Result<Vec<Message>, ApiError> {
    let Some(messages) = messages.filter(|m| !m.is_empty()) else {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must be a non-empty list",
        ));
    };
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    Some(&format!("{param}.role")),
                    format!(
                        "`{param}.role` is `{other}`: tenets serve takes system, developer, user \
                         and assistant messages"
                    ),
                ))
            }
        };
        let content = text_content(m.content.as_ref())
            .map_err(|why| ApiError::invalid(Some(&format!("{param}.content")), why))?;
        out.push(Message::new(role, content));
    }
    if out.last().is_none_or(|m| m.role != "user") {
        return Err(ApiError::invalid(
            Some("messages"),
            "the last message must be the user's (the turn the assistant answers)",
        ));
    }
    Ok(out)
}

/// A message's text: a string, or a list of `{"type": "text", "text": …}` parts joined.
fn text_content(content: Option<&Value>) -> Result<String, String> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (kind, _) => {
                        return Err(format!(
                            "content part {j} is of type `{}`: only text parts are supported",
                            kind.unwrap_or("?")
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(Value::Null) | None => Err("a message needs text content".into()),
        Some(other) => Err(format!(
            "content must be a string or a list of text parts, found {}",
            match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                _ => "an object",
            }
        )),
    }
}

/// What the guards decided, in every response (`tenets` field; clients may ignore it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// `answered`, `refused` or `revised`.
    pub outcome: String,
    /// The guard that fired: `input` or `output`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The principle at stake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub revise_rounds: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// The response's message: a refusal by a guard fills `refusal` too (and, for a request that
/// asked for JSON, only `refusal`: a refusal is no JSON, as in OpenAI's structured outputs).
pub fn message_json(content: &str, refused: bool, json: bool) -> Value {
    serde_json::json!({
        "role": "assistant",
        "content": if refused && json { Value::Null } else { Value::String(content.into()) },
        "refusal": if refused { Value::String(content.into()) } else { Value::Null },
    })
}

/// OpenAI's finish reason: a guard's refusal is `content_filter`.
pub fn finish_reason(finish: &str, refused: bool) -> &'static str {
    if refused {
        "content_filter"
    } else if finish == "length" || finish == "context" {
        "length"
    } else {
        "stop"
    }
}

#[cfg(test)]
mod tests {
    use super::{ChatRequest, Format};
    use crate::engine::session::Sampling;

    const DEFAULTS: Sampling = Sampling {
        temperature: 0.7,
        top_p: 0.95,
    };

    fn check(body: &str) -> Result<super::ChatTurn, super::ApiError> {
        ChatRequest::parse(body.as_bytes())?.check("m", DEFAULTS)
    }

    #[test]
    fn a_plain_request_reads_as_openai_clients_send_it() {
        let turn = check(
            r#"{"model":"m","messages":[{"role":"developer","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
                "stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":9,
                "seed":-1,"user":"u1","presence_penalty":0}"#,
        )
        .expect("valid");
        assert_eq!(turn.messages[0].role, "system");
        assert_eq!(turn.messages[1].content, "Hi there");
        assert!(turn.stream && turn.include_usage);
        assert_eq!(turn.max_tokens, Some(9));
        assert_eq!(turn.sampling, DEFAULTS);
        assert_eq!(turn.seed, Some(u32::MAX));
        assert_eq!(turn.format, Format::Text);
    }

    #[test]
    fn bad_requests_name_their_field() {
        let cases = [
            ("{", None, 400),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
                400,
            ),
            (
                r#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
                404,
            ),
            (r#"{"model":"m","messages":[]}"#, Some("messages"), 400),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                Some("messages[0].role"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                Some("messages[0].content"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}]}"#,
                Some("messages"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                Some("temperature"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
                Some("n"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[]}"#,
                Some("tools"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["\n"]}"#,
                Some("stop"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                Some("max_tokens"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"a"}}}"#,
                Some("response_format"),
                400,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"many"}"#,
                None,
                400,
            ),
        ];
        for (body, param, status) in cases {
            let e = check(body).expect_err(body);
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            assert_eq!(e.status.as_u16(), status, "{body}");
            let json = e.body();
            assert!(json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }
}
